"""The prune stage's report: the pruned model's accuracy, size and sparsity, and for the
structured method how its channels were cut (per layer, the sensitivity allocation, the
layer ablation)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from slimline.compress.sparsity import sparsity
from slimline.model import ModelSpec, count_flops, count_params
from slimline.params import PruneParams
from slimline.report import markdown_table

if TYPE_CHECKING:  # the stage imports pruning (and Torch-Pruning) only when it runs
    from slimline.compress.pruning import Pruned


def results(method: str, cfg: PruneParams, model: nn.Module, spec: ModelSpec, pruned: Pruned, *,
            source_acc: float, val_acc: float, test_acc: float, layers: dict) -> dict:
    """reports/prune_<method>.json. `model`: the pruned model as saved, under `spec`;
    `layers`: the per-layer record the structured method also saves beside the model."""
    nonzero, total = sparsity(model)
    out = {"method": method, "source": cfg.source, "test_accuracy": test_acc, "val_accuracy": val_acc,
           "source_val_accuracy": source_acc, "params": count_params(model), "nonzero_params": nonzero,
           "sparsity": 1 - nonzero / total, "flops": count_flops(model, spec.input_shape),
           "amount": cfg.amount, "steps": cfg.steps, "structure": spec.structure,
           "ablation": pruned.ablation}
    if method == "structured":
        out.update(layers)
    return out


def shortfall(cfg: PruneParams, allocation: dict | None) -> str | None:
    """Why the sensitivity allocation removes clearly fewer FLOPs than `amount` asks, or None."""
    if not allocation or allocation["short_by"] <= 0.02:
        return None
    return (f"every layer at the largest of prune.scan_ratios {cfg.scan_ratios} removes "
            f"{allocation['short_by']:.0%} less than the uniform budget: add a larger scan ratio")


def markdown(method: str, cfg: PruneParams, res: dict, spec: ModelSpec, pruned: Pruned) -> str:
    """reports/prune_<method>.md's body, from results() `res`."""
    md = (f"## prune ({method})\n\nFrom `{cfg.source}` (val {res['source_val_accuracy']:.4f}): "
          f"test accuracy **{res['test_accuracy']:.4f}** (val {res['val_accuracy']:.4f}), "
          f"{res['params']:,} params of which {res['nonzero_params']:,} non-zero "
          f"({res['sparsity']:.1%} sparse), {res['flops'] / 1e6:.2f} MFLOPs.\n\n")
    if spec.model == "cnn":
        md += f"Structure: conv {spec.structure['conv_channels']}, hidden {spec.structure['hidden']}.\n"
    else:
        md += f"Model `{spec.model}`, pruned.\n"
    if pruned.layers:
        md += f"\n### Channels per layer (ratios: {cfg.ratios})\n\n" + markdown_table(pruned.layers) + "\n"
    if pruned.allocation:
        a = pruned.allocation
        md += (f"\nThe sensitivity scan's per-layer ratios give {a['flops']:,} FLOPs, against "
               f"{a['target_flops']:,} from `amount` {cfg.amount} uniformly (unpruned {a['base_flops']:,}); "
               f"drop threshold {a['threshold']:.4f}. `drop@r`: val accuracy lost with that layer alone "
               f"pruned by r, before fine-tuning.\n")
        short = shortfall(cfg, a)
        if short:
            md += f"\n**Short of the FLOPs budget:** {short}.\n"
    if pruned.ablation:
        md += "\n### Layer ablation (val accuracy after removing each unit)\n\n" + markdown_table(
            [{k: v for k, v in row.items() if k != "structure"} for row in pruned.ablation]) + "\n"
    return md


def not_applicable_markdown(method: str, why: str) -> str:
    return f"## prune ({method})\n\nNot applicable: {why}.\n"
