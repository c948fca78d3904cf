"""How much test accuracy does static int8 (PTQ) lose, per model and seed? And does the fake
quantization that QAT trains with (slimline/compress/qat.py) predict what the int8 file does?

    python -m benchmarks.ptq_drop [--model timm:mobilenetv3_small_100] [--size 32]
                                  [--epochs 6] [--seeds 0 1 2] [--numerics fast] [--threads 1]

For each seed: trains the model on the prepared digits (data/prepared; `dvc repro prepare`
first) with params.yaml's `train:` recipe (epochs, seed, numerics and threads from the
flags), exports it as the quantize stage does, quantizes it with the stage's static int8
(ORT QDQ, 7-bit per-channel weights, uint8 activations, MinMax over the stage's
calibration images, no node kept in fp32), and prints fp32 vs int8 test accuracy, the drop
in points and how many test predictions differ. --size 32 zero-pads the 28x28 digits (the
zoo's MobileNets need it) and normalizes with the padded train split's mean and std.

It answers the questions quantization-aware training starts from (docs/design.md,
"Quantization-aware training"): is there a model in reach whose PTQ drop is worth
recovering? One 1,000-image test split has a 95% interval of about +/-0.8 pt. And: the same
weights, fake-quantized in torch as QAT trains them (ORT's scheme and placement, calibrated
on the same images), against the int8 file: the test predictions that differ and the largest
logit difference. Training can only recover what the fake quantization simulates.
"""
from __future__ import annotations

import tasks  # noqa: F401  (first: pins the CPU math before torch loads)

# isort: split

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.support.project import ROOT


def padded(prep, size: int):
    """prep with every split zero-padded to size x size, mean/std of the padded train split."""
    from slimline.data.dataset import Prepared

    splits = {}
    for name, (x, y) in prep.splits.items():
        before = (size - x.shape[-1]) // 2
        after = size - x.shape[-1] - before
        splits[name] = (np.pad(x, ((0, 0), (0, 0), (before, after), (before, after))), y)
    train = splits["train"][0].astype(np.float64)
    mean = [float(m) for m in train.mean(axis=(0, 2, 3))]
    std = [float(max(s, 1e-6)) for s in train.std(axis=(0, 2, 3))]
    return Prepared(splits=splits, meta={**prep.meta, "mean": mean, "std": std,
                                         "input_shape": list(splits["train"][0].shape[1:])})


def one_seed(model_name: str, prep, cfg, qcfg, out: Path) -> dict:
    import torch

    from slimline.compress.export import checked_logits, export_onnx
    from slimline.compress.quantization import calibration_set, quantize_static_int8
    from slimline.model import ModelSpec, build_model, count_params
    from slimline.runtime.onnxruntime import predict
    from slimline.training.checkpoint import CheckpointStore
    from slimline.training.loop import fit, seed_everything

    shape = tuple(prep.splits["train"][0].shape[1:])
    spec = ModelSpec(structure={}, input_shape=shape, num_classes=prep.meta["num_classes"],
                     mean=tuple(prep.meta["mean"]), std=tuple(prep.meta["std"]), model=model_name, kwargs={})
    seed_everything(cfg.seed, cfg.num_threads, cfg.numerics)
    model = build_model(spec)
    data = {k: (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y)).long())
            for k, (x, y) in prep.splits.items()}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fit(model, data["train"], data["val"], cfg, CheckpointStore(tmp),
            desc=f"{model_name} seed {cfg.seed}")
    seconds = time.perf_counter() - start
    model.eval()
    fp32, int8 = out / f"seed{cfg.seed}_fp32.onnx", out / f"seed{cfg.seed}_int8_static.onnx"
    export_onnx(model, shape, fp32, opset=qcfg.opset)
    x_test, y_test = prep.splits["test"][0].astype(np.float32), np.asarray(prep.splits["test"][1])
    ref = checked_logits(model, fp32, x_test).argmax(1)  # the export agrees with torch
    calib = calibration_set(prep, qcfg)
    quantize_static_int8(fp32, int8, calib, qcfg.calibration_batch_size)
    q_logits = predict(int8, x_test)
    q = q_logits.argmax(1)
    fq_logits = fake_quantized_logits(model, fp32, calib, qcfg.calibration_batch_size, x_test)
    return {"params": count_params(model), "train_s": seconds, "n": len(y_test),
            "fp32": float((ref == y_test).mean()), "int8": float((q == y_test).mean()),
            "differ": int((ref != q).sum()), "fq_differ": int((fq_logits.argmax(1) != q).sum()),
            "fq_max_diff": float(np.abs(fq_logits - q_logits).max()),
            "logit_range": float(np.abs(q_logits).max())}


def fake_quantized_logits(model, fp32: Path, calib: np.ndarray, batch_size: int, x: np.ndarray) -> np.ndarray:
    """model's test logits with ORT's int8 simulated as QAT trains it, calibrated on the
    images and batches the quantize stage calibrates on."""
    import torch

    from slimline.compress import qat

    fake = qat.prepare(model, torch.from_numpy(calib[:2]), fp32)
    qat.calibrate(fake, (calib[i:i + batch_size] for i in range(0, len(calib), batch_size)))
    with torch.no_grad():
        return np.concatenate([fake(torch.from_numpy(x[i:i + 256])).numpy() for i in range(0, len(x), 256)])


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags every benchmark that trains on the prepared digits takes (qat_gain.py too)."""
    p.add_argument("--model", default="timm:mobilenetv3_small_100")
    p.add_argument("--size", type=int, default=32, help="input side: 28 as prepared, or zero-padded")
    p.add_argument("--numerics", default=None, help="train.numerics (default: params.yaml's)")
    p.add_argument("--threads", type=int, default=None, help="train.num_threads (default: params.yaml's)")


def setup(args) -> tuple:
    """(params, prepared data at --size, train-recipe update) for add_model_args' flags and
    --epochs. The CPU math is pinned through the environment first, before torch loads."""
    if args.numerics:
        from slimline.numerics import pin_env

        assert "torch" not in sys.modules, "torch loaded before the numerics were pinned"
        pin_env(args.numerics)

    from slimline.data.dataset import load_prepared
    from slimline.params import load_params

    params = load_params(ROOT / "params.yaml")
    prep = load_prepared(ROOT / "data" / "prepared")
    if args.size != prep.splits["train"][0].shape[-1]:
        prep = padded(prep, args.size)
    update = {"epochs": args.epochs, "device": "cpu"}
    update |= {"numerics": args.numerics} if args.numerics else {}
    update |= {"num_threads": args.threads} if args.threads else {}
    return params, prep, update


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(p)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    params, prep, update = setup(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ptq_drop.") as tmp:
        for seed in args.seeds:
            cfg = params.train.model_copy(update={**update, "seed": seed})
            rows.append((seed, one_seed(args.model, prep, cfg, params.quantize, Path(tmp))))
    print(f"\n{args.model} at {args.size}x{args.size}, {args.epochs} epochs, "
          f"numerics {cfg.numerics}, {cfg.num_threads} thread(s), {rows[0][1]['params']:,} params")
    print("| seed | train s | fp32 test | int8 test | drop pt | predictions differ | "
          "fake quant vs int8: predictions differ | largest logit difference |")
    print("|---|---|---|---|---|---|---|---|")
    for seed, r in rows:
        print(f"| {seed} | {r['train_s']:.0f} | {r['fp32']:.3f} | {r['int8']:.3f} | "
              f"{100 * (r['fp32'] - r['int8']):+.1f} | {r['differ']} of {r['n']} | "
              f"{r['fq_differ']} of {r['n']} | {r['fq_max_diff']:.3f} "
              f"(logits up to {r['logit_range']:.1f}) |")
    drops = [100 * (r["fp32"] - r["int8"]) for _, r in rows]
    spread = f" +/- {statistics.stdev(drops):.1f}" if len(drops) > 1 else ""
    print(f"mean drop {statistics.mean(drops):+.1f}{spread} pt; seeds at >= 2 pt: "
          f"{sum(d >= 2 for d in drops)} of {len(drops)}")


if __name__ == "__main__":
    main()
