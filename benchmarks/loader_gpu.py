"""Does the loader keep a GPU fed, and does it change nothing? fit() on CUDA over a prepared
split read per batch from disk, with 0 and N DataLoader workers, against the same split held
on the GPU as one tensor (the path before data was read per batch).

    python -m benchmarks.loader_gpu [--images 50000] [--size 64] [--workers 4] [--epochs 2]

Writes a synthetic split of random uint8 RGB images with SplitWriter to a temporary folder
(one class per image's mean brightness, so the model learns something), then trains a small
CNN for --epochs with bf16 autocast as the stages do on a GPU, alternating the ways of reading
it, 2 rounds each. Prints samples/s of each (median), the ratio to the GPU tensor, and whether
the trained weights are bit-identical across 0 and N workers, with and without the photo
augmentation (train.crop_scale, train.hflip). Targets: per batch from disk >= 0.9x, and the
same weights for any worker count.
"""
from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

import numpy as np


def write_split(path: Path, n: int, size: int) -> None:
    from slimline.data.splitfile import SplitWriter

    rng = np.random.default_rng(0)
    with SplitWriter(path, n, (3, size, size), np.uint8) as w:
        for i in range(0, n, 4096):
            k = min(4096, n - i)
            y = rng.integers(0, 10, k)
            shade = (y * 12).astype(np.uint8)[:, None, None, None]
            x = rng.integers(0, 128, (k, 3, size, size), dtype=np.uint8) + shade
            w.write(x, y)


def train(data, val, cfg, workers: int, device) -> tuple[float, str]:
    """(samples/s of the training steps, hash of the trained weights)."""
    import torch

    from slimline.model import ModelSpec, build_model
    from slimline.params import LoaderParams, Structure
    from slimline.training.checkpoint import CheckpointStore
    from slimline.training.loop import fit, seed_everything

    seed_everything(0, 8, "fast")
    spec = ModelSpec(structure=Structure(conv_channels=[32, 64], hidden=[128], batch_norm=True).model_dump(),
                     input_shape=tuple(data[0].shape[1:]), num_classes=10, mean=(127.0,) * 3, std=(40.0,) * 3)
    model = build_model(spec).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        r = fit(model, data, val, cfg, CheckpointStore(tmp), desc=f"workers {workers}",
                loader=LoaderParams(workers=workers, prefetch=4))
    digest = hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes()
                                     for v in model.state_dict().values())).hexdigest()[:16]
    torch.cuda.synchronize() if device.type == "cuda" else None
    return r.samples_seen / r.train_seconds, digest


def main() -> None:
    import torch

    from slimline.data.dataset import Split
    from slimline.params import TrainParams

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    with tempfile.TemporaryDirectory(prefix="slimline-loader-gpu-") as tmp:
        write_split(Path(tmp) / "train.safetensors", args.images, args.size)
        disk = Split(Path(tmp) / "train.safetensors")
        on_gpu = (torch.from_numpy(np.array(disk.x)).to(device),
                  torch.from_numpy(np.array(disk.y)).to(device))
        val = (on_gpu[0][:512], on_gpu[1][:512])
        cfg = TrainParams(epochs=args.epochs, batch_size=args.batch_size, lr=0.05, device=device.type,
                          numerics="fast", augment_shift=0)
        ways = {"GPU tensor": (on_gpu, 0), "disk, 0 workers": (disk, 0),
                f"disk, {args.workers} workers": (disk, args.workers)}
        rates: dict[str, list[float]] = {k: [] for k in ways}
        digests: dict[str, set[str]] = {k: set() for k in ways}
        for _ in range(2):
            for name, (data, workers) in ways.items():
                rate, digest = train(data, val, cfg, workers, device)
                rates[name].append(rate)
                digests[name].add(digest)
        photos = cfg.model_copy(update={"crop_scale": (0.3, 1.0), "hflip": True, "epochs": 1})
        augmented = {w: train(disk, val, photos, w, device) for w in (0, args.workers)}
    med = {k: float(np.median(v)) for k, v in rates.items()}
    base = med["GPU tensor"]
    print(f"\nfit() on {args.images:,} {args.size}x{args.size} RGB images, batch {args.batch_size}, "
          f"{args.epochs} epochs, median of 2 rounds:")
    for name, rate in med.items():
        print(f"  {name:>20}: {rate:8.0f} samples/s  {rate / base:.2f}x  weights {sorted(digests[name])}")
    best = max(med[k] for k in ways if k.startswith("disk")) / base
    print(f"best per-batch read vs GPU tensor: {best:.2f}x (target >= 0.9): "
          f"{'met' if best >= 0.9 else 'MISSED'}")
    same = len(set().union(*digests.values())) == 1
    print(f"same weights whichever way it is read, across rounds: {same}")
    (r0, d0), (rn, dn) = augmented[0], augmented[args.workers]
    print(f"photo augmentation, 1 epoch: 0 workers {r0:.0f} samples/s, {args.workers} workers {rn:.0f} "
          f"samples/s; same weights: {d0 == dn}")


if __name__ == "__main__":
    main()
