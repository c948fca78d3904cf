"""Does quantization-aware training recover what static int8 (PTQ) loses? Measured on the
int8 files ORT runs, against the control that matters: the same extra epochs without fake
quantization.

    python -m benchmarks.qat_gain [--model timm:mobilenetv3_small_100] [--size 32] [--epochs 6]
                                  [--seed 1] [--qat-epochs 2] [--qat-lr 0.005]
                                  [--numerics fast] [--threads 1]

Trains the model on the prepared digits (data/prepared; `dvc repro prepare` first) with
params.yaml's `train:` recipe, as benchmarks/ptq_drop.py does, and quantizes it as the
quantize stage does (PTQ). Then, from that model, with the KD loss from it as the teacher
(distill.temperature and alpha), for --qat-epochs at --qat-lr (cosine):
- control: fp32 fine-tuning, then the same PTQ;
- QAT: the fake-quantized model (slimline/compress/qat.py) calibrated on the stage's
  calibration images, fine-tuned, and exported through quantize_static with its ranges.
Prints the test accuracy of each int8 file and the share of the PTQ drop QAT recovers.
One 1,000-image test split has a 95% interval of about +/-0.8 pt.
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


def accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    from slimline.runtime.onnxruntime import predict

    return float((predict(path, x).argmax(1) == y).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(p)
    p.add_argument("--epochs", type=int, default=6, help="fp32 training epochs before PTQ")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--qat-epochs", type=int, default=2, help="fine-tuning epochs, control and QAT alike")
    p.add_argument("--qat-lr", type=float, default=0.005)
    args = p.parse_args()
    params, prep, update = setup(args)
    update |= {"seed": args.seed}

    import torch

    from slimline.compress import qat
    from slimline.compress.export import export_onnx
    from slimline.compress.kd import make_kd_loss
    from slimline.compress.quantization import quantize_static_int8
    from slimline.compress.variants import calibration_set
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
    calib, bs = calibration_set(prep, qcfg), qcfg.calibration_batch_size
    rows, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="qat_gain.") as tmp:
        out = Path(tmp)
        seed_everything(cfg.seed, cfg.num_threads, cfg.numerics)
        model = build_model(spec)
        fit(model, data["train"], data["val"], cfg, CheckpointStore(out / "fp32"), desc="fp32")
        model.eval()
        export_onnx(model, shape, out / "fp32.onnx", opset=qcfg.opset)
        quantize_static_int8(out / "fp32.onnx", out / "ptq.onnx", calib, bs)
        rows["fp32"] = accuracy(out / "fp32.onnx", x_test, y_test)
        rows["PTQ"] = accuracy(out / "ptq.onnx", x_test, y_test)
        teacher = copy.deepcopy(model)

        seed_everything(tune.seed, tune.num_threads, tune.numerics)
        control = copy.deepcopy(model)
        start = time.perf_counter()
        fit(control, data["train"], data["val"], tune, CheckpointStore(out / "control"),
            loss_fn=make_kd_loss(teacher, params.distill), desc="fp32 fine-tune")
        seconds["control"] = time.perf_counter() - start
        control.eval()
        export_onnx(control, shape, out / "control.onnx", opset=qcfg.opset)
        quantize_static_int8(out / "control.onnx", out / "control_ptq.onnx", calib, bs)
        rows["fp32 fine-tuned"] = accuracy(out / "control.onnx", x_test, y_test)
        rows["fp32 fine-tuned, then PTQ"] = accuracy(out / "control_ptq.onnx", x_test, y_test)

        seed_everything(tune.seed, tune.num_threads, tune.numerics)
        start = time.perf_counter()
        fake = qat.prepare(model, torch.from_numpy(calib[:2]), out / "fp32.onnx")
        qat.calibrate(fake, (calib[i:i + bs] for i in range(0, len(calib), bs)))
        qat.fine_tune(fake, teacher, data, tune, params.distill, CheckpointStore(out / "qat"))
        qat.export_int8(fake, model, out / "fp32.onnx", out / "qat.onnx", calib, bs)
        seconds["QAT"] = time.perf_counter() - start
        rows["QAT (int8 file)"] = accuracy(out / "qat.onnx", x_test, y_test)

    drop = rows["fp32"] - rows["PTQ"]
    print(f"\n{args.model} at {args.size}x{args.size}: {args.epochs} epochs fp32 (seed {args.seed}), then "
          f"{args.qat_epochs} epochs at lr {args.qat_lr} (cosine, KD from the fp32 model); "
          f"numerics {cfg.numerics}, {cfg.num_threads} thread(s); fine-tuning took "
          f"{seconds['control']:.0f} s (control) and {seconds['QAT']:.0f} s (QAT)")
    print("| model | test accuracy | vs fp32 |")
    print("|---|---|---|")
    for name, acc in rows.items():
        print(f"| {name} | {acc:.3f} | {100 * (acc - rows['fp32']):+.1f} pt |")
    if drop > 0:
        print(f"PTQ drop {100 * drop:.1f} pt; QAT recovers "
              f"{100 * (rows['QAT (int8 file)'] - rows['PTQ']) / drop:.0f}% of it, the control "
              f"{100 * (rows['fp32 fine-tuned, then PTQ'] - rows['PTQ']) / drop:.0f}%")
    else:
        print("no PTQ drop to recover on this model and seed")


if __name__ == "__main__":
    main()
