"""One QAT stage's run: calibrate, fine-tune under KD, pick the epoch on val, export int8.

The mechanics (fake quantization that matches ORT, the export) are slimline/compress/qat.py;
this is the experiment around them, as slimline/compress/distill.py is the distill stage's.
"""
from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slimline import numerics as numerics_mod
from slimline.codedeps import code_files
from slimline.compress import qat as qat_mod
from slimline.compress.export import checked_logits, export_onnx
from slimline.compress.kd import load_teacher
from slimline.compress.quantization import calibration_set
from slimline.data.dataset import load_prepared
from slimline.errors import StageError
from slimline.io import atomic_dir, write_json
from slimline.model import load_model
from slimline.params import Params
from slimline.paths import resume_dir
from slimline.runtime.onnxruntime import agreement, predict
from slimline.training.checkpoint import CheckpointStore
from slimline.training.loop import evaluate, resolve_device, seed_everything

# The code the stage runs: a change to it must not resume a stale run.
CODE_DEPS = code_files("tasks.qat")


@dataclass
class QatResult:
    results: dict  # reports/qat_<model>.json
    run: dict  # reports/qat_<model>.run.json: timings, device, numerics


def recipe(params: Params):
    """train's recipe at qat.lr for qat.epochs, cosine-decayed: fine-tuning a trained model
    needs no warm-up."""
    return params.train.model_copy(update={"epochs": params.qat.epochs, "lr": params.qat.lr,
                                           "schedule": "cosine"})


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == y)) if len(y) else 1.0


def train_and_export(params: Params, name: str, data_dir: Path, teacher_dir: Path, src_dir: Path,
                     out: Path, variant: str) -> QatResult:
    """Write out/<name>.<variant>.onnx and out/manifest.json. Resumes after a kill from its
    checkpoints in .slimline/resume (keyed by the recipe and the content of every input)."""
    if not (src_dir / "structure.json").exists():
        stage = ("train_baseline" if name == "baseline" else "distill" if name == "student"
                 else f"prune@{name.removeprefix('prune_')}")
        raise StageError(f"no model in {src_dir}: run the `{stage}` stage first")
    cfg, q = recipe(params), params.quantize
    numerics = seed_everything(cfg.seed, cfg.num_threads, cfg.numerics)
    device = resolve_device(cfg.device)
    prep = load_prepared(data_dir)
    calib = calibration_set(prep, q)
    teacher = load_teacher(teacher_dir, device)
    model, spec = load_model(src_dir)
    key = {"model": name, "train": cfg.model_dump(),
           "distill": params.distill.model_dump(include={"temperature", "alpha"}),
           "calibration": [q.calibration_batches, q.calibration_batch_size], "opset": q.opset}
    store = CheckpointStore(resume_dir(f"qat_{name}", key, [str(data_dir), str(teacher_dir), str(src_dir),
                                                            *CODE_DEPS]), keep=cfg.epochs)
    x_val, y_val = prep.splits["val"]
    x_test, y_test = prep.splits["test"]
    # memory-mapped: every use below reads a batch at a time
    with tempfile.TemporaryDirectory(prefix="slimline-qat-") as tmp:
        fp32 = Path(tmp) / f"{name}.onnx"
        export_onnx(model, spec.input_shape, fp32, opset=q.opset)  # as quantize exports it
        ref_val, ref_test = checked_logits(model, fp32, x_val), checked_logits(model, fp32, x_test)
        fake = qat_mod.prepare(model, torch.from_numpy(calib[:2]), fp32)
        bs = q.calibration_batch_size
        qat_mod.calibrate(fake, (calib[i:i + bs] for i in range(0, len(calib), bs)))
        fake = fake.to(device)
        zeros = qat_mod.keep_zeros(fake)
        data = prep.splits  # read per batch from disk
        # Epoch 0, calibrated and untrained, is the PTQ file's numbers: a candidate too, so a
        # model that int8 does not hurt is not made worse on val by the fine-tuning.
        net = qat_mod.Trainable(fake)
        calibrated = copy.deepcopy(net.state_dict())
        epoch0 = {"epoch": 0, "val_acc": evaluate(net, data["val"], loader=params.loader)[1]}
        start = time.perf_counter()
        fit = qat_mod.fine_tune(fake, teacher, data, cfg, params.distill, store, loader=params.loader)
        seconds = time.perf_counter() - start
        best = qat_mod.best_epoch([epoch0, *fit.history])
        state = {"model": calibrated} if best == 0 else store.at(best)
        if state is None:
            raise StageError(f"the checkpoint of epoch {best} is gone from {store.folder}: rerun the stage")
        net.load_state_dict(state["model"])  # fit saves the wrapper's state
        qat_mod.set_training(fake, False)
        fake = fake.cpu()
        file = f"{name}.{variant}.onnx"
        with atomic_dir(out) as dst:
            blind = qat_mod.export_int8(fake, model, fp32, dst / file, calib, bs)
            logits_val, logits_test = predict(dst / file, x_val), predict(dst / file, x_test)
            write_json(dst / "manifest.json", {
                "variants": [{"name": f"{name}.{variant}", "file": file, "source": name,
                              "source_dir": src_dir.as_posix(), "quantization": "qat", "opset": q.opset,
                              "qat": {"epochs": cfg.epochs, "lr": cfg.lr, "best_epoch": best}}],
                "calibration": {"batches": q.calibration_batches, "batch_size": bs}})
            size = (dst / file).stat().st_size
    store.clear()  # done: the next run starts afresh
    results = {"model": name, "variant": f"{name}.{variant}", "source": name, "enabled": True,
               "epochs": cfg.epochs, "lr": cfg.lr, "best_epoch": best, "zeros_held": zeros,
               "bytes": size, "val_acc_calibrated": epoch0["val_acc"], "history": fit.history,
               "unsimulated": blind,
               "val_accuracy": _accuracy(logits_val, y_val),
               "test_accuracy": _accuracy(logits_test, y_test),
               "fp32_val_accuracy": _accuracy(ref_val, y_val),
               "fp32_test_accuracy": _accuracy(ref_test, y_test),
               "agreement": agreement(logits_test, ref_test)}
    run = {"train_seconds": seconds, "resumed_from_epoch": fit.resumed_from,
           "num_threads": cfg.num_threads, **numerics_mod.record(numerics, device)}
    return QatResult(results=results, run=run)
