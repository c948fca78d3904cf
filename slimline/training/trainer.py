"""Stage-level training: everything around the loop that a training stage needs.

Seeding, device placement, the resume folder, dvclive + TensorBoard logging,
saving the model and measuring it. train_baseline uses it; later training
stages (distillation, fine-tuning) reuse it instead of copying it.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from slimline import numerics as numerics_mod
from slimline.data.dataset import Prepared
from slimline.model import ModelSpec, build_model, count_flops, count_params, save_model
from slimline.params import LoaderParams, NetworkParams, Structure, TrainParams
from slimline.paths import resume_dir
from slimline.training import distributed
from slimline.training.checkpoint import CheckpointStore
from slimline.training.loop import FitResult, LossFn, evaluate, fit, resolve_device, seed_everything


@dataclass
class Trained:
    model: nn.Module
    spec: ModelSpec
    fit: FitResult
    results: dict  # deterministic metrics for reports/<stage>.json
    run: dict  # timings and device for reports/<stage>.run.json
    store: CheckpointStore  # the resume folder (already cleared unless keep_checkpoints)


class EpochLogger:
    """Per-epoch metrics to dvclive (for `dvc plots show`) and TensorBoard.

    Both folders are rebuilt from the full history on every run, so a resumed
    run ends with exactly the files an uninterrupted one would have written.
    """

    def __init__(self, stage: str):
        from dvclive import Live
        from torch.utils.tensorboard import SummaryWriter

        # dvcyaml=False / save_dvc_exp=False: dvc.yaml is ours, experiments are DVC's job.
        self.live = Live(dir=f"dvclive/{stage}", save_dvc_exp=False, dvcyaml=False, report=None)
        tb_dir = Path("logs/tensorboard") / stage
        shutil.rmtree(tb_dir, ignore_errors=True)
        self.tb = SummaryWriter(log_dir=str(tb_dir))

    def __call__(self, m: dict) -> None:
        for split in ("train", "val"):
            for what in ("loss", "acc"):
                value = m[f"{split}_{what}"]
                self.live.log_metric(f"{split}/{what}", value)
                self.tb.add_scalar(f"{what}/{split}", value, m["epoch"])
        self.live.next_step()

    def close(self) -> None:
        self.live.end()
        self.tb.close()


def onnx_latency(model: nn.Module, input_shape: tuple[int, int, int]) -> dict:
    """Batch-1 ONNX Runtime p50/p95 (ms, 1 thread) of the model's fp32 export: the
    latency a structure search compares. It goes in the run record, never in the
    tracked metrics (timings vary between identical runs; dvc.lock must not). The
    export is a temporary file, not an output; it costs a few hundred ms."""
    from slimline.compress.export import export_onnx
    from slimline.runtime.onnxruntime import latency_ms

    try:
        with tempfile.TemporaryDirectory(prefix="slimline-latency-") as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(model, input_shape, path)
            t = latency_ms(path, input_shape, batch=1, warmup=20, repeats=200)
    except Exception as err:  # noqa: BLE001 - a timing problem must not fail a finished training
        return {"ort_p50_ms_b1": None, "ort_p95_ms_b1": None, "ort_error": f"{type(err).__name__}: {err}"}
    return {"ort_p50_ms_b1": t["p50"], "ort_p95_ms_b1": t["p95"]}


def latency_line(run: dict) -> str:
    """The report's sentence on onnx_latency()'s result."""
    if run.get("ort_p50_ms_b1") is None:
        return f"ONNX Runtime latency not measured ({run.get('ort_error', 'no timing')})."
    return (f"ONNX Runtime fp32, batch 1, 1 thread: p50 {run['ort_p50_ms_b1'] * 1e3:.0f} µs "
            f"(p95 {run['ort_p95_ms_b1'] * 1e3:.0f} µs).")


def network_spec(net: Structure, input_shape: tuple[int, int, int], num_classes: int,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> ModelSpec:
    """The spec of a params network section (baseline, student, or a bare Structure) for data
    of this shape, classes and normalisation. A cnn's structure.json holds exactly what it
    always has."""
    model = getattr(net, "model", "cnn")
    structure = net.structure() if isinstance(net, NetworkParams) else net
    return ModelSpec(structure=structure.model_dump() if model == "cnn" else {},
                     input_shape=tuple(input_shape), num_classes=num_classes, mean=tuple(mean),
                     std=tuple(std), model=model, kwargs=dict(getattr(net, "kwargs", {}) or {}))


def model_spec(net: Structure, prep: Prepared) -> ModelSpec:
    """network_spec() for the prepared data."""
    return network_spec(net, prep.input_shape, prep.num_classes, prep.meta["mean"], prep.meta["std"])


def train_network(stage: str, spec: ModelSpec, cfg: TrainParams, prep: Prepared,
                  out_dir: str | Path, key_params: dict, deps: list[str],
                  loss_fn: LossFn | None = None, keep_checkpoints: bool = False,
                  init: Callable[[nn.Module], nn.Module] | None = None, train: bool = True,
                  hints: nn.Module | None = None, log: bool = True,
                  loader: LoaderParams | None = None) -> Trained:
    """Build `spec` for the prepared data, train it with `cfg`, save it to out_dir.

    init: applied to the freshly built (seeded) model before training: imported weights,
    or deriving a smaller architecture. train=False evaluates and saves it as it is.
    keep_checkpoints: leave the resume folder for the caller to clear, for stages
    that train several models and must resume all of them after a kill.
    hints: feature-KD hints (slimline.compress.features.FeatureHints, whose loss the
    loss_fn adds; a type this module does not import, so stages that train without
    hints do not depend on that code): attached to the model for
    training, their adapters trained and checkpointed with it, detached before saving.
    log: write the dvclive and TensorBoard curves (dvclive/<stage>); off for a run
    whose curve has no place in the DAG's outputs (an ablation).
    loader: how batches are read from the prepared files (never changes a result).
    Under torchrun every rank calls it and trains its share; rank 0 alone writes.
    """
    ranks = distributed.current()
    threads = distributed.threads_per_rank(cfg.num_threads, ranks.world)
    numerics = seed_everything(cfg.seed, threads, cfg.numerics)
    device = resolve_device(cfg.device)
    model = build_model(spec)  # built after seeding: init weights are seeded too
    if init is not None:
        model = init(model)
    model = model.to(device)
    data = prep.splits  # read per batch from disk, never whole
    store = CheckpointStore(resume_dir(stage, key_params, deps))
    if train:
        logger = None
        try:
            logger = EpochLogger(stage) if log and ranks.writer else None
            if hints is not None:
                hints.attach(model)
            result = fit(model, data["train"], data["val"], cfg, store, loss_fn=loss_fn,
                         on_epoch=logger, desc=stage, extra=hints, loader=loader)
        finally:
            if hints is not None:
                hints.detach()
            if logger is not None:
                logger.close()
    else:  # an imported model used as it is: its metrics, no epochs
        (train_loss, train_acc), (val_loss, val_acc) = (evaluate(model, data[s], loader=loader)
                                                         for s in ("train", "val"))
        result = FitResult(history=[{"epoch": 0, "train_loss": train_loss, "train_acc": train_acc,
                                     "val_loss": val_loss, "val_acc": val_acc}])
    autocast = device.type == "cuda"
    test_loss, test_acc = evaluate(model, data["test"], autocast=autocast, loader=loader,
                                   ranks=distributed.setup(device.type))
    model = model.cpu().eval()
    if ranks.writer:
        save_model(model, spec, out_dir)
        if not keep_checkpoints:
            store.clear()  # success: the resume folder has served its purpose
    last = result.history[-1]
    results = {"test_accuracy": test_acc, "test_loss": test_loss, "val_accuracy": last["val_acc"],
               "val_loss": last["val_loss"], "train_accuracy": last["train_acc"],
               "epochs": cfg.epochs if train else 0, "params": count_params(model),
               "flops": count_flops(model, spec.input_shape), "structure": spec.structure,
               **({"model": spec.model} if spec.model != "cnn" else {})}
    run = {"device": str(device), "bf16_autocast": autocast, "train_seconds": result.train_seconds,
           "samples_per_s": result.samples_seen / max(result.train_seconds, 1e-9),
           "resumed_from_epoch": result.resumed_from, "num_threads": cfg.num_threads,
           **({"ranks": ranks.world, "threads_per_rank": threads} if ranks.active else {}),
           **numerics_mod.record(numerics, device),
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           **(onnx_latency(model, spec.input_shape) if ranks.writer else {})}
    return Trained(model=model, spec=spec, fit=result, results=results, run=run, store=store)
