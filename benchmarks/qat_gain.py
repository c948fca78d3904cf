"""Does quantization-aware training recover what static int8 (PTQ) loses? Measured on the
int8 files ORT runs, against the control that matters: the same extra epochs without fake
quantization.

    python -m benchmarks.qat_gain [--model timm:mobilenetv3_small_100] [--size 32] [--epochs 6]
                                  [--seeds 0 1 2] [--qat-epochs 2] [--qat-lr 0.005]
                                  [--numerics fast] [--threads 1]
                                  [--teacher self|baseline] [--teacher-epochs 15]

Per seed: trains the model on the prepared digits (data/prepared; `dvc repro prepare`
first) with params.yaml's `train:` recipe, as benchmarks/ptq_drop.py does, and quantizes it
as the quantize stage does:
- PTQ: static int8, every node in int8;
- accuracy-aware PTQ: static int8 keeping up to quantize.max_excluded nodes in fp32 to stay
  within quantize.max_accuracy_drop on val (the quantize stage's static variant).
Then, from that model, for --qat-epochs at --qat-lr (cosine):
- control: fp32 fine-tuning with the KD loss from the teacher (distill.temperature and
  alpha), then PTQ: what the extra epochs alone do;
- QAT without KD: the fake-quantized model (slimline/compress/qat.py), calibrated on the
  stage's calibration images, fine-tuned on the labels alone, exported through
  quantize_static with its ranges;
- QAT with KD: the same with the KD loss, as the qat@<model> stage trains.
The teacher: `self` (the fp32 model itself, as it was before fine-tuning) or `baseline`
(params.yaml's baseline network, trained once for --teacher-epochs at seed 0 on the same
images, as the pipeline's qat@student stage learns from models/baseline). A teacher that is
no better than its student can only hold it to its own mistakes.
Prints each ONNX file's test accuracy (the same 1,000 images for every file), bytes and
ORT batch-1 p50 (1 thread, timed side by side in interleaved rounds), and the share of the
PTQ drop each recovers. One 1,000-image split has a 95% interval of about +/-0.8 pt.
"""
from __future__ import annotations

import tasks  # noqa: F401  (first: pins the CPU math before torch loads)

# isort: split

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.ptq_drop import add_model_args, setup


def p50s(files: dict[str, Path], shape: tuple) -> dict[str, float]:
    """ORT batch-1 p50 (ms) of each file, 1 thread, all timed in the same interleaved rounds
    (evaluate's time_rounds), the median over rounds."""
    from types import SimpleNamespace

    from slimline.evaluation.measure import time_rounds
    from slimline.runtime import registry

    callers = {name: registry.load("onnxruntime", path, shape, 1).caller(1) for name, path in files.items()}
    timed = time_rounds(callers, SimpleNamespace(warmup=20, repeats=200, rounds=5))
    return {name: float(np.median(t["p50"])) for name, t in timed.items()}


def train_teacher(args, params, prep, update: dict):
    """params.yaml's baseline network trained on the benchmark's images (seed 0), in eval
    mode, and its test accuracy."""
    import torch

    from slimline.model import build_model
    from slimline.training.checkpoint import CheckpointStore
    from slimline.training.loop import fit, seed_everything
    from slimline.training.trainer import network_spec

    cfg = params.train.model_copy(update=update | {"epochs": args.teacher_epochs, "seed": 0})
    spec = network_spec(params.baseline, tuple(prep.splits["train"][0].shape[1:]), prep.meta["num_classes"],
                        prep.meta["mean"], prep.meta["std"])
    data = prep.splits
    seed_everything(cfg.seed, cfg.num_threads, cfg.numerics)
    teacher = build_model(spec)
    with tempfile.TemporaryDirectory(prefix="qat_gain.teacher.") as tmp:
        fit(teacher, data["train"], data["val"], cfg, CheckpointStore(tmp), desc=f"teacher {spec.model}")
    teacher.eval()
    with torch.no_grad():
        x, y = data["test"]
        acc = float((teacher(x.float()).argmax(1) == y).float().mean())
    return teacher, acc


def one_seed(args, params, prep, update: dict, teacher=None) -> tuple[dict, dict]:
    """({row: (test accuracy, bytes, p50 ms)}, {"control"/"QAT": fine-tuning seconds}) of one seed."""
    import torch

    from slimline.compress import qat
    from slimline.compress.export import export_onnx
    from slimline.compress.kd import make_kd_loss
    from slimline.compress.quantization import calibration_set, quantize_static_int8
    from slimline.compress.sensitivity import accuracy, static_int8_within_budget
    from slimline.model import ModelSpec, build_model
    from slimline.training.checkpoint import CheckpointStore
    from slimline.training.loop import fit, seed_everything

    cfg = params.train.model_copy(update=update)
    tune = cfg.model_copy(update={"epochs": args.qat_epochs, "lr": args.qat_lr, "schedule": "cosine"})
    qcfg = params.quantize
    shape = tuple(prep.splits["train"][0].shape[1:])
    spec = ModelSpec(structure={}, input_shape=shape, num_classes=prep.meta["num_classes"],
                     mean=tuple(prep.meta["mean"]), std=tuple(prep.meta["std"]), model=args.model, kwargs={})
    data = {k: (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y)).long())
            for k, (x, y) in prep.splits.items()}
    x_test, y_test = prep.splits["test"][0].astype(np.float32), np.asarray(prep.splits["test"][1])
    x_val, y_val = prep.splits["val"][0].astype(np.float32), np.asarray(prep.splits["val"][1])
    calib, bs = calibration_set(prep, qcfg), qcfg.calibration_batch_size
    files, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="qat_gain.") as tmp:
        out = Path(tmp)
        seed_everything(cfg.seed, cfg.num_threads, cfg.numerics)
        model = build_model(spec)
        fit(model, data["train"], data["val"], cfg, CheckpointStore(out / "fp32"), desc="fp32")
        model.eval()
        export_onnx(model, shape, out / "fp32.onnx", opset=qcfg.opset)
        quantize_static_int8(out / "fp32.onnx", out / "ptq.onnx", calib, bs)
        aware = static_int8_within_budget(out / "fp32.onnx", out / "aware.onnx", calib, bs, x_val, y_val,
                                          qcfg.max_accuracy_drop, qcfg.max_excluded)
        files |= {"fp32": out / "fp32.onnx", "PTQ, all int8": out / "ptq.onnx",
                  f"accuracy-aware PTQ ({len(aware.fp32_nodes)} node(s) in fp32)": out / "aware.onnx"}
        teacher = copy.deepcopy(model) if teacher is None else teacher

        seed_everything(tune.seed, tune.num_threads, tune.numerics)
        control = copy.deepcopy(model)
        start = time.perf_counter()
        fit(control, data["train"], data["val"], tune, CheckpointStore(out / "control"),
            loss_fn=make_kd_loss(teacher, params.distill), desc="fp32 fine-tune")
        seconds["control"] = time.perf_counter() - start
        control.eval()
        export_onnx(control, shape, out / "control.onnx", opset=qcfg.opset)
        quantize_static_int8(out / "control.onnx", out / "control_ptq.onnx", calib, bs)
        files["control: fp32 fine-tuned, then PTQ"] = out / "control_ptq.onnx"

        for name, distill in (("QAT without KD", params.distill.model_copy(update={"alpha": 0.0})),
                              ("QAT with KD", params.distill)):
            seed_everything(tune.seed, tune.num_threads, tune.numerics)
            start = time.perf_counter()
            fake = qat.prepare(model, torch.from_numpy(calib[:2]), out / "fp32.onnx")
            qat.calibrate(fake, (calib[i:i + bs] for i in range(0, len(calib), bs)))
            qat.fine_tune(fake, teacher, data, tune, distill, CheckpointStore(out / name))
            path = out / f"{name.replace(' ', '_')}.onnx"
            qat.export_int8(fake, model, out / "fp32.onnx", path, calib, bs)
            seconds[name] = time.perf_counter() - start
            files[name] = path
        latency = p50s(files, shape)
        rows = {name: (accuracy(path, x_test, y_test), path.stat().st_size, latency[name])
                for name, path in files.items()}
    return rows, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(p)
    p.add_argument("--epochs", type=int, default=6, help="fp32 training epochs before PTQ")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--qat-epochs", type=int, default=2, help="fine-tuning epochs, control and QAT alike")
    p.add_argument("--qat-lr", type=float, default=0.005)
    p.add_argument("--teacher", choices=["self", "baseline"], default="self",
                   help="KD teacher: the fp32 model itself, or params.yaml's baseline trained here")
    p.add_argument("--teacher-epochs", type=int, default=15, help="--teacher baseline's training epochs")
    args = p.parse_args()
    params, prep, update = setup(args)
    teacher = None
    if args.teacher == "baseline":
        teacher, acc = train_teacher(args, params, prep, update)
        print(f"teacher: params.yaml's baseline ({params.baseline.model}), {args.teacher_epochs} epochs, "
              f"test accuracy {acc:.3f}")
    recovered = {}
    for seed in args.seeds:
        rows, seconds = one_seed(args, params, prep, update | {"seed": seed}, teacher)
        fp32, ptq = rows["fp32"][0], rows["PTQ, all int8"][0]
        print(f"\n{args.model} at {args.size}x{args.size}, seed {seed}: {args.epochs} epochs fp32, then "
              f"{args.qat_epochs} epochs at lr {args.qat_lr} (cosine); numerics "
              f"{update.get('numerics', params.train.numerics)}, "
              f"{update.get('num_threads', params.train.num_threads)} thread(s); "
              "fine-tuning took " + ", ".join(f"{s:.0f} s ({n})" for n, s in seconds.items()))
        print("| file | test accuracy | vs fp32 | share of the PTQ drop recovered | bytes "
              "| ORT p50 b1 (ms) |")
        print("|---|---|---|---|---|---|")
        for name, (acc, size, ms) in rows.items():
            share = f"{100 * (acc - ptq) / (fp32 - ptq):.0f}%" if fp32 > ptq and name != "fp32" else "-"
            recovered.setdefault(name, []).append(share)
            print(f"| {name} | {acc:.3f} | {100 * (acc - fp32):+.1f} pt | {share} | {size:,} | {ms:.3f} |")
    if len(args.seeds) > 1:
        print(f"\nshare of the PTQ drop recovered, seeds {args.seeds}:")
        for name, shares in recovered.items():
            if name not in ("fp32", "PTQ, all int8"):
                print(f"- {name}: {', '.join(shares)}")


if __name__ == "__main__":
    main()
