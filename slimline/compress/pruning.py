"""Three ways to shrink a trained model built by `slimline.model.build_model`.

* unstructured: zero the smallest weights globally (same shapes, sparse tensors);
* structured: remove whole channels/neurons with Torch-Pruning (physically smaller;
  residual-aware, the classifier kept whole);
* layer: for the built-in cnn, remove whole hidden layers or conv blocks; for other
  models, replace whole residual blocks with Identity; chosen greedily by validation accuracy.

A pruned cnn is described by `structure_of`; any other model records what pruning
resized (slimline.model.record_reshaped). Either way `save_model` writes safetensors +
JSON and `build_model` rebuilds it, with no pickle. `derive` shrinks an untrained model
into a student.

Structured pruning and derive need Torch-Pruning's dependency graph. For a model it cannot
trace (a channel shuffle) they raise GraphUnavailable (a NotApplicable): the prune stage
marks the method not applicable and moves on. A graph that runs past prune.graph_timeout_s
stops the stage instead (a StageError): how fast this machine is must not decide which
models exist, since those are versioned outputs.
"""
from __future__ import annotations

import copy
import dataclasses
import operator
import re
from typing import Callable

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune

from slimline.compress import pruning_ratios
from slimline.errors import StageError
from slimline.model import ModelSpec, ShapeError, build_model, count_params
from slimline.params import PRUNE_METHODS, PruneParams, Structure
from slimline.timebudget import OutOfTime, time_budget

FineTune = Callable[[nn.Module, int], None]  # finetune(model, epochs): trains in place
Evaluate = Callable[[nn.Module], float]  # evaluate(model) -> validation accuracy


def structure_of(model: nn.Module, base: Structure) -> Structure:
    """The widths a built (possibly pruned) model actually has; the rest comes from base."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return Structure.model_validate({
        **base.model_dump(),
        "conv_channels": [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)],
        "hidden": [m.out_features for m in linears[:-1]],  # the last Linear is the classifier
    })


def _check(amount: float, steps: int) -> None:
    if not 0 <= amount < 1:
        raise ValueError(f"pruning amount must be in [0, 1), got {amount}")
    if steps < 1:
        raise ValueError(f"pruning steps must be >= 1, got {steps}")


def prune_unstructured(model: nn.Module, amount: float, steps: int, finetune: FineTune,
                       epochs_per_step: int) -> nn.Module:
    """Global L1 magnitude pruning of every Conv2d/Linear weight, in `steps` rounds."""
    _check(amount, steps)
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(m.weight.numel() for m, _ in params)
    done = 0
    for k in range(1, steps + 1):
        # Cumulative target after step k: 1-(1-amount)^(k/steps) of all weights, i.e. the
        # same fraction of the *remaining* weights each step. global_unstructured prunes
        # among the still-unmasked weights, so we pass it an absolute count (target so far
        # minus already pruned) rather than a fraction: no rounding drift across steps.
        target = round(total * (1 - (1 - amount) ** (k / steps)))
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=target - done)
        done = target
        # The forward pre-hook recomputes weight = weight_orig * mask, so pruned weights
        # stay zero however the optimiser moves weight_orig during fine-tuning.
        finetune(model, epochs_per_step)
    for m, name in params:
        prune.remove(m, name)  # bake the mask in: plain `weight` tensors in the state_dict
    return model


def classifier(model: nn.Module) -> nn.Module:
    """The layer that makes the logits, which pruning keeps whole: the last Linear, or the
    last Conv2d for a model without one (all-convolutional heads)."""
    for kind in (nn.Linear, nn.Conv2d):
        layers = [m for m in model.modules() if isinstance(m, kind)]
        if layers:
            return layers[-1]
    raise StageError("the model has no Linear or Conv2d layer to keep as its classifier")


class NotApplicable(Exception):
    """A method that cannot apply to this model (no candidate block, say); str() says why."""


# What differs from run to run in an error message: a reason becomes part of a hashed output.
# "<Node object at 0x7f3a...>" -> "<Node object>"
_AT_ADDRESS = re.compile(r"(<[^<>]*?)\s+at 0x[0-9a-fA-F]+>")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def error_text(err: BaseException) -> str:
    """`Type: first line` of an error, memory addresses scrubbed: the same text every run."""
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    # callers end the sentence
    first = _ADDRESS.sub("<address>", _AT_ADDRESS.sub(r"\1>", first))[:300].rstrip(".")
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


class GraphUnavailable(NotApplicable):
    """Torch-Pruning's dependency graph of the model failed, or ran past its budget;
    str() says which, in words that are the same every run."""

    def __init__(self, err: BaseException):
        self.timed_out = isinstance(err, OutOfTime)
        super().__init__(f"{err} (prune.graph_timeout_s)" if self.timed_out
                         else f"{pruning_ratios.GRAPH} failed: {error_text(err)}")


def derive(model: nn.Module, example_input: torch.Tensor, width: float,
           budget: float | None = None) -> nn.Module:
    """A student with the model's architecture and every prunable channel group kept at
    `width` of its channels (rounded to a multiple of 8; the classifier kept whole), by
    Torch-Pruning on the untrained model: the kept weights are its fresh initialisation.
    GraphUnavailable when Torch-Pruning cannot trace it within `budget` seconds."""
    if not 0 < width < 1:
        raise ValueError(f"derive width must be in (0, 1), got {width}")
    model.eval()  # trace without touching BatchNorm statistics
    head = classifier(model)
    try:
        with time_budget(budget, pruning_ratios.GRAPH):
            pruner = tp.pruner.BasePruner(model, example_input,
                                          importance=tp.importance.GroupMagnitudeImportance(p=2),
                                          pruning_ratio=1 - width, round_to=8, ignored_layers=[head])
            pruner.step()
    except Exception as err:  # noqa: BLE001 - whatever Torch-Pruning raises, it cannot trace this model
        raise GraphUnavailable(err) from err
    return model.train()


def prune_structured(model: nn.Module, example_input: torch.Tensor, amount: float, steps: int,
                     finetune: FineTune, epochs_per_step: int,
                     ratios: dict[str, float] | None = None, budget: float | None = None) -> nn.Module:
    """Remove the lowest-L2 channels/neurons of every layer but the classifier (Torch-Pruning):
    `amount` of each layer, or of the layers named in `ratios` (module path -> ratio) theirs.
    Building the pruner and each step get `budget` seconds (OutOfTime); fine-tuning has none."""
    _check(amount, steps)
    modules = dict(model.named_modules())
    pruner = pruning_ratios.pruner(
        model, example_input.to(next(model.parameters()).device),
        ignored=[classifier(model)],  # keep one logit per class
        amount=amount,  # of each layer's original channels, reached at the last step
        ratios={modules[n]: r for n, r in (ratios or {}).items()},
        steps=steps,  # linear schedule: amount * k/steps after step k
        budget=budget)
    for _ in range(steps):
        pruning_ratios.step(pruner, budget)  # slices Conv/BN/Linear weights and their consumers' inputs
        finetune(model, epochs_per_step)
    return model


# Which layer kinds shift ordinal when a unit of that list is removed: removing hidden[i]
# removes the i-th Linear (and BatchNorm1d), so every later Linear's ordinal drops by one.
_UNIT_KINDS = {"hidden": (nn.Linear, nn.BatchNorm1d), "conv_channels": (nn.Conv2d, nn.BatchNorm2d)}


def _layers_by_ordinal(model: nn.Module) -> dict[tuple[type, int], nn.Module]:
    """{(type, k): k-th module of that type} for modules holding tensors of their own.
    Sequential indices shift when a block is removed; ordinals per kind do not (except
    for the removed kind, which `_transplant` corrects for)."""
    counts: dict[type, int] = {}
    out = {}
    for m in model.modules():
        if next(m.parameters(recurse=False), None) is None and next(m.buffers(recurse=False), None) is None:
            continue
        k = counts.get(type(m), 0)
        counts[type(m)] = k + 1
        out[(type(m), k)] = m
    return out


def _transplant(old: nn.Module, new: nn.Module, key: str, removed: int) -> None:
    """Copy into `new` every tensor of `old` whose layer (by ordinal) and name and shape
    still match, given that unit `removed` of list `key` was taken out."""
    old_layers = _layers_by_ordinal(old)
    for (kind, k), module in _layers_by_ordinal(new).items():
        src = old_layers.get((kind, k + 1 if kind in _UNIT_KINDS[key] and k >= removed else k))
        if src is None:
            continue
        src_state, state = src.state_dict(), module.state_dict()
        state.update({n: t for n, t in src_state.items() if n in state and t.shape == state[n].shape})
        module.load_state_dict(state)


def prune_layers(model: nn.Module, spec: ModelSpec, n_remove: int, evaluate: Evaluate,
                 finetune: FineTune, ablation_epochs: int
                 ) -> tuple[nn.Module, ModelSpec, list[dict]]:
    """Greedily remove `n_remove` hidden layers / conv blocks: each round tries every
    single removal, fine-tunes and scores it, and keeps the best. Returns the final
    model, its spec and the ablation table (one row per candidate per round)."""
    # Read the widths off the model itself, so a previously channel-pruned model works too.
    spec = dataclasses.replace(
        spec, structure=structure_of(model, Structure.model_validate(spec.structure)).model_dump())
    device = next(model.parameters()).device
    table: list[dict] = []
    for rnd in range(1, n_remove + 1):
        s = Structure.model_validate(spec.structure)
        best = None  # (sort key, model, spec, table row)
        for key in ("hidden", "conv_channels"):
            for i in range(len(getattr(s, key))):
                widths = getattr(s, key)[:i] + getattr(s, key)[i + 1:]
                other = s.conv_channels if key == "hidden" else s.hidden
                if not widths and not other:
                    continue  # a bare linear classifier is not a legal Structure
                reduced = Structure.model_validate({**s.model_dump(), key: widths})
                cand_spec = dataclasses.replace(spec, structure=reduced.model_dump())
                torch.manual_seed(0)  # layers that cannot inherit weights start the same every run
                try:
                    cand = build_model(cand_spec)
                except ShapeError:
                    continue  # a block that grew the image (padding > kernel/2) fed later ones
                _transplant(model, cand, key, i)
                cand.to(device).train(model.training)
                finetune(cand, ablation_epochs)
                acc = float(evaluate(cand))
                params = count_params(cand)
                row = {"round": rnd, "removed": f"{key}[{i}]",
                       "structure": {"hidden": reduced.hidden, "conv_channels": reduced.conv_channels},
                       "val_accuracy": acc, "params": params, "chosen": False}
                table.append(row)
                rank = (-acc, params)  # best accuracy; ties -> the smaller model; then first tried
                if best is None or rank < best[0]:
                    best = (rank, cand, cand_spec, row)
        if best is None:
            raise StageError(
                f"layer pruning round {rnd}: no hidden layer or conv block of {spec.structure} "
                f"can be removed (one must remain and the input must stay large enough); "
                f"lower n_remove to {rnd - 1}")
        _, model, spec, row = best
        row["chosen"] = True
    return model, spec, table


def _adds_its_input(module: nn.Module) -> bool:
    """Whether the module's own forward adds its input to something: a residual block."""
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:  # noqa: BLE001 - untraceable control flow: not a candidate
        return False
    inputs = [n for n in graph.nodes if n.op == "placeholder"][:1]
    adds = [n for n in graph.nodes
            if (n.op == "call_function" and n.target in (operator.add, operator.iadd, torch.add))
            or (n.op == "call_method" and n.target in ("add", "add_"))]
    return bool(inputs) and any(inputs[0] in n.args for n in adds)


def residual_blocks(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Module paths of the blocks block removal may replace with Identity: parameterised
    modules whose forward adds their input (a skip connection), whose output has their
    input's shape, and that are not nested inside another such block."""
    shapes: dict[str, tuple] = {}

    def hook(name):
        def record(module, args, output):
            if args and torch.is_tensor(args[0]) and torch.is_tensor(output):
                shapes[name] = (tuple(args[0].shape), tuple(output.shape))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if n and next(m.parameters(), None) is not None]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input.to(next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    found: list[str] = []
    for name, module in model.named_modules():  # parents before children
        if name in shapes and shapes[name][0] == shapes[name][1] \
                and not any(name.startswith(f"{f}.") for f in found) and _adds_its_input(module):
            found.append(name)
    return found


def prune_blocks(model: nn.Module, example_input: torch.Tensor, n_remove: int, evaluate: Evaluate,
                 finetune: FineTune, ablation_epochs: int) -> tuple[nn.Module, list[dict]]:
    """Block removal for models other than the built-in cnn: each round tries replacing each
    residual block with Identity, fine-tunes and scores it, and keeps the best. Returns the
    model and the ablation table; NotApplicable when no block can go."""
    table: list[dict] = []
    for rnd in range(1, n_remove + 1):
        candidates = residual_blocks(model, example_input)
        if not candidates:
            if rnd == 1:
                raise NotApplicable("the model has no residual block (a module that adds its input "
                                    "to its output, same shape in and out) to remove")
            raise StageError(f"block removal round {rnd}: no residual block left; lower "
                             f"prune.layers_to_remove to {rnd - 1}")
        best = None
        for name in candidates:
            cand = copy.deepcopy(model)
            cand.set_submodule(name, nn.Identity())
            finetune(cand, ablation_epochs)
            acc, params = float(evaluate(cand)), count_params(cand)
            row = {"round": rnd, "removed": name, "val_accuracy": acc, "params": params, "chosen": False}
            table.append(row)
            rank = (-acc, params)
            if best is None or rank < best[0]:
                best = (rank, cand, row)
        _, model, row = best
        row["chosen"] = True
    return model, table


@dataclasses.dataclass(frozen=True)
class PruneJob:
    """What every method gets besides the model: the prune params and the stage's data."""
    cfg: PruneParams
    example: torch.Tensor  # a batch of inputs, to trace the dependency graph
    finetune: FineTune
    evaluate: Evaluate  # validation accuracy


@dataclasses.dataclass
class Pruned:
    model: nn.Module
    spec: ModelSpec
    ablation: list[dict]  # the layer method's candidate table; [] for the others
    layers: list[dict] = dataclasses.field(default_factory=list)  # structured: each group's ratio
    allocation: dict | None = None  # structured, ratios: sensitivity: how the ratios were chosen


def _unstructured(model: nn.Module, spec: ModelSpec, job: PruneJob) -> Pruned:
    c = job.cfg
    return Pruned(prune_unstructured(model, c.amount, c.steps, job.finetune, c.finetune_epochs), spec, [])


def _width(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _structured(model: nn.Module, spec: ModelSpec, job: PruneJob) -> Pruned:
    """Uniform ratios, or (ratios: sensitivity) per-layer ratios from a scan at the same FLOPs.
    NotApplicable when Torch-Pruning cannot trace the model, or a graph step runs past
    prune.graph_timeout_s."""
    c = job.cfg
    example = job.example.to(next(model.parameters()).device)
    head = classifier(model)
    ignored = [n for n, m in model.named_modules() if m is head]
    try:
        before = pruning_ratios.groups(model, example, [head], c.graph_timeout_s)
    except OutOfTime as err:
        raise _too_slow(err) from err
    except Exception as err:  # noqa: BLE001 - the first trace: the model ran, so any failure is Torch-Pruning's
        raise _without_graph(GraphUnavailable(err)) from err
    ratios, allocation, drops = None, None, {}
    try:
        if c.ratios == "sensitivity":
            scanned = pruning_ratios.scan(model, example, ignored, job.evaluate, before, c.scan_ratios,
                                          c.graph_timeout_s)
            found = pruning_ratios.allocate(model, example, ignored, scanned, c.amount, spec.input_shape,
                                            c.graph_timeout_s)
            ratios, drops = found.ratios(), {layer.name: layer.drops for layer in scanned}
            allocation = {**dataclasses.asdict(found), "short_by": found.short_by()}
        model = prune_structured(model, job.example, c.amount, c.steps, job.finetune, c.finetune_epochs,
                                 ratios, c.graph_timeout_s)
    except OutOfTime as err:  # a later graph of the same model: only its budget can stop it
        raise _too_slow(err) from err
    modules = dict(model.named_modules())
    layers = [{"layer": n, "channels": w, "kept": _width(modules[n]), "ratio": 1 - _width(modules[n]) / w,
               **{f"drop@{r:g}": d for r, d in drops.get(n, {}).items()}} for n, w in before.items()]
    return Pruned(model, spec, [], layers, allocation)


def _without_graph(why: GraphUnavailable) -> NotApplicable:
    """Structured pruning's not-applicable reason: what failed, and what to do about it."""
    return NotApplicable(f"{why}; structured pruning needs that graph (take structured out of "
                         f"prune.methods to skip it)")


def _too_slow(err: OutOfTime) -> StageError:
    """A graph past its budget fails the stage, leaving its last outputs as they were: a
    not-applicable marker would make a versioned output depend on this machine's speed."""
    return StageError(f"{err} (prune.graph_timeout_s), so the stage stopped rather than hang. Raise "
                      f"prune.graph_timeout_s, or take structured out of prune.methods")


def _layer(model: nn.Module, spec: ModelSpec, job: PruneJob) -> Pruned:
    """Whole hidden layers or conv blocks for the built-in cnn; whole residual blocks otherwise."""
    c = job.cfg
    if spec.model == "cnn":
        model, spec, ablation = prune_layers(model, spec, c.layers_to_remove, job.evaluate, job.finetune,
                                             c.ablation_epochs)
    else:
        model, ablation = prune_blocks(model, job.example, c.layers_to_remove, job.evaluate, job.finetune,
                                       c.ablation_epochs)
    job.finetune(model, c.finetune_epochs * c.steps)  # the same budget as the other methods
    return Pruned(model, spec, ablation)


# prune.methods names -> code. The schema lists the same names (PruneMethod) without
# importing torch; the check below keeps the two in step.
PRUNERS: dict[str, Callable[[nn.Module, ModelSpec, PruneJob], Pruned]] = {
    "unstructured": _unstructured, "structured": _structured, "layer": _layer}
assert set(PRUNERS) == set(PRUNE_METHODS), "slimline.params.PruneMethod and PRUNERS disagree"


def saved_spec(model: nn.Module, spec: ModelSpec) -> ModelSpec:
    """The spec to save a pruned model under: a cnn's actual widths; other models keep their
    spec (save_model records what pruning resized)."""
    if spec.model != "cnn":
        return spec
    return dataclasses.replace(spec, structure=structure_of(model, Structure.model_validate(spec.structure))
                               .model_dump())


def write_not_applicable(out, method: str, reason: str) -> dict:
    """The declared output folder of a method that cannot apply, holding only the marker
    (quantize and evaluate skip it), and the report saying why."""
    from slimline.io import atomic_dir, write_json
    from slimline.paths import NOT_APPLICABLE

    report = {"method": method, "status": "not_applicable", "reason": reason}
    with atomic_dir(out) as tmp:
        write_json(tmp / NOT_APPLICABLE, report)
    return report
