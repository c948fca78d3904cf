"""Peak memory of reading and training on an image folder: 20,000 images of 64x64 RGB.

    python -m benchmarks.imagefolder_memory [--images 20000] [--size 64]

Writes the images (10 classes of random PNGs) to a temporary folder, then, each in a fresh
process so the peaks do not mix: (1) reads them as `prepare` does (decode, convert, one
uint8 array); (2) the same, plus one training epoch of a small model on them, as the
training stages hold the data. Prints each peak RSS against the 1.5 GiB target, and the
size of the uint8 array beside what float32 would take.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TARGET_GIB = 1.5


def write_images(root: Path, n: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / f"class{i % 10}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, compress_level=1)


def child(root: str, train: bool) -> dict:
    import tasks  # noqa: F401  (pins CPU math as the stages do)
    from slimline.data.imagefolder import load_imagefolder

    raw, _ = load_imagefolder(root, channels=3)
    out = {"images": int(len(raw.y)), "uint8_mb": raw.x.nbytes / 2**20}
    if train:

        from slimline.data.dataset import Prepared
        from slimline.model import ModelSpec, build_model
        from slimline.params import Structure, TrainParams
        from slimline.training.checkpoint import CheckpointStore
        from slimline.training.loop import fit

        n = len(raw.y)
        prep = Prepared(splits={"train": (raw.x, raw.y), "val": (raw.x[: n // 10], raw.y[: n // 10])},
                        meta={"input_shape": list(raw.x.shape[1:]), "num_classes": 10,
                              "mean": [127.0] * 3, "std": [70.0] * 3})
        data = prep.splits
        spec = ModelSpec(structure=Structure(conv_channels=[8], hidden=[16]).model_dump(),
                         input_shape=tuple(raw.x.shape[1:]), num_classes=10, mean=(127.0,) * 3,
                         std=(70.0,) * 3)
        with tempfile.TemporaryDirectory() as tmp:
            fit(build_model(spec), data["train"], data["val"], TrainParams(epochs=1, num_threads=2),
                CheckpointStore(tmp), desc="memory")
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT=" + json.dumps(child(args.child, args.train)), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        write_images(Path(tmp), args.images, args.size)
        for train in (False, True):
            cmd = [sys.executable, "-m", "benchmarks.imagefolder_memory", "--child", tmp,
                   *(["--train"] * train)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            r = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT="))[7:])
            what = "read + one training epoch" if train else "read (as prepare does)"
            print(f"{what:<28} {r['images']:,} images: peak RSS {r['peak_rss_mb'] / 1024:.2f} GiB "
                  f"(target <= {TARGET_GIB} GiB); images as uint8 {r['uint8_mb']:.0f} MiB, "
                  f"as float32 they would be {4 * r['uint8_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
