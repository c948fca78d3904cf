"""Memory of `prepare` and of one training epoch as the dataset grows, and the throughput of
training read per batch from disk against training on tensors held in memory.

    python -m benchmarks.data_memory [--images 20000 200000] [--size 64] [--skip-throughput]
                                     [--source imagefolder|idx|npz]

For each size, writes an image folder of that many 64x64 RGB PNGs (10 classes, distinct
images) to a temporary folder (`--source idx`: the same images in grey as a gzipped IDX
pair; `npz`: as one np.savez_compressed file), then runs the real stages on it in a fresh
project folder:
`python -m tasks.prepare`, then `python -m tasks.train_baseline` for one epoch of a small
CNN. A sampler polls /proc every 10 ms and sums the anonymous memory (RssAnon: heap and
stacks, not the file pages of memory maps, which the kernel can drop) of the stage's process
tree. Targets: the peak grows at most 1.2x from the smallest size to the largest, and stays
under 1 GiB.

Throughput, on the smallest set (which fits in memory): fit() samples/s over the prepared
split read per batch from its memory-mapped file, against the same split loaded whole into
a tensor and indexed in memory (the path every stage took before data was read per batch),
alternating, 3 rounds each. Target: at least 0.9x.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

import tasks  # noqa: F401  (first: pins the CPU math before torch loads, as the stages do)

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10
PEAK_GIB, GROWTH = 1.0, 1.2


def _image(i: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Image i, (size, size, 3) uint8: smooth ramps (small PNGs) with a colour per index and
    a little noise, so all are distinct."""
    base = np.linspace(0, 255, size, dtype=np.float32)
    img = (base[None, :, None] * ((i % 7) + 1) / 8 + base[:, None, None] * ((i % 5) + 1) / 6
           + np.array([i % 256, (i // 256) % 256, (i // 65536) * 37 % 256])[None, None, :])
    return img.astype(np.uint8) ^ rng.integers(0, 4, (size, size, 3), dtype=np.uint8)


def _write_range(args: tuple[str, int, int, int]) -> None:
    from PIL import Image

    root, start, stop, size = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        path = Path(root) / f"class{i % CLASSES}" / f"{i:07d}.png"
        Image.fromarray(_image(i, size, rng)).save(path, compress_level=1)


BLOCK = 2000  # images generated and written at a time


def _blocks(n: int, size: int):
    for start in range(0, n, BLOCK):
        rng = np.random.default_rng(start)
        yield np.stack([_image(i, size, rng) for i in range(start, min(start + BLOCK, n))])


def write_arrays(root: Path, n: int, size: int, source: str) -> Path:
    """The same images as an IDX folder (grey, gzipped) or an npz (compressed, NCHW), written
    a block at a time, so that the benchmark itself holds one block."""
    import gzip
    import zipfile

    root.mkdir(parents=True)
    labels = (np.arange(n) % CLASSES).astype(np.uint8)
    if source == "idx":
        with gzip.open(root / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
            f.write((0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, size, size)))
            for block in _blocks(n, size):
                f.write(block[..., 0].tobytes())
        with gzip.open(root / "train-labels-idx1-ubyte.gz", "wb") as f:
            f.write((0x801).to_bytes(4, "big") + n.to_bytes(4, "big") + labels.tobytes())
        return root
    path = root / "images.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                     "shape": (n, 3, size, size)})
            for block in _blocks(n, size):
                f.write(np.ascontiguousarray(block.transpose(0, 3, 1, 2)).tobytes())
        with zf.open("y.npy", "w") as f:
            np.lib.format.write_array(f, labels)
    return path


def write_images(root: Path, n: int, size: int) -> None:
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    step = 2000
    with Pool(os.cpu_count() or 1) as pool:
        pool.map(_write_range, [(str(root), i, min(i + step, n), size) for i in range(0, n, step)])


def _rss_anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return pids


def run_peak(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(peak summed RssAnon of the process tree in GiB, wall seconds) of one command."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    peak = 0
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, sum(_rss_anon_kib(p) for p in _tree(proc.pid)))
        time.sleep(0.01)
    reader.join()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(out[-30:])}")
    return peak / 2**20, time.perf_counter() - start


PARAMS = """\
data: {{source: {source}, path: {path}, min_per_class: 10}}
baseline: {{model: cnn, conv_channels: [8, 16], hidden: [32], dropout: 0.0}}
train: {{epochs: 1, batch_size: 128, num_threads: 2, device: cpu}}
"""


def measure(images: Path, project: Path, source: str) -> dict:
    project.mkdir(parents=True)
    (project / "params.yaml").write_text(PARAMS.format(source=source, path=images))
    for code in ("slimline", "tasks"):  # the stages hash their code by its path in the project
        (project / code).symlink_to(ROOT / code)
    py = sys.executable
    prep_gib, prep_s = run_peak([py, "-m", "tasks.prepare", "--out", "data/prepared"], project)
    train_gib, train_s = run_peak([py, "-m", "tasks.train_baseline", "--data", "data/prepared",
                                   "--out", "models/baseline"], project)
    return {"prepare_gib": prep_gib, "prepare_s": prep_s, "train_gib": train_gib, "train_s": train_s}


def throughput(prepared: Path, rounds: int = 3) -> dict[str, list[float]]:
    """fit() samples/s over the split read per batch and over tensors in memory."""
    import torch

    from slimline.data.dataset import load_prepared
    from slimline.model import ModelSpec, build_model
    from slimline.params import Structure, TrainParams
    from slimline.training.checkpoint import CheckpointStore
    from slimline.training.loop import fit, seed_everything

    prep = load_prepared(prepared)
    on_disk = prep.splits["train"]
    in_memory = (torch.from_numpy(np.array(on_disk.x)), torch.from_numpy(np.array(on_disk.y)))
    val = (in_memory[0][:64], in_memory[1][:64])  # a token validation: the epoch is what is timed
    cfg = TrainParams(epochs=1, batch_size=128, num_threads=2, device="cpu")
    spec = ModelSpec(structure=Structure(conv_channels=[8, 16], hidden=[32], dropout=0.0).model_dump(),
                     input_shape=prep.input_shape, num_classes=prep.num_classes,
                     mean=tuple(prep.meta["mean"]), std=tuple(prep.meta["std"]))
    rates: dict[str, list[float]] = {"per batch from disk": [], "tensors in memory": []}
    for _ in range(rounds):
        for name, data in (("per batch from disk", on_disk), ("tensors in memory", in_memory)):
            seed_everything(0, 2)
            with tempfile.TemporaryDirectory() as tmp:
                r = fit(build_model(spec), data, val, cfg, CheckpointStore(tmp), desc="throughput")
            rates[name].append(r.samples_seen / r.train_seconds)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--source", choices=("imagefolder", "idx", "npz"), default="imagefolder")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slimline-data-memory-", dir=ROOT.parent))
    rows = []
    try:
        for n in args.images:
            t = time.perf_counter()
            images = work / f"images{n}"
            if args.source == "imagefolder":
                write_images(images, n, args.size)
            else:
                images = write_arrays(images, n, args.size, args.source)
            print(f"wrote {n:,} {args.size}x{args.size} images ({args.source}) in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
            r = measure(images, work / f"project{n}", args.source)
            rows.append((n, r))
            print(f"{n:>9,} images: prepare peak RssAnon {r['prepare_gib']:.3f} GiB "
                  f"({r['prepare_s']:.0f} s), "
                  f"train_baseline (1 epoch) {r['train_gib']:.3f} GiB ({r['train_s']:.0f} s)", flush=True)
            shutil.rmtree(work / f"images{n}")  # the prepared copy stays for the throughput run
        (n0, first), (n1, last) = rows[0], rows[-1]
        print(f"\npeak RssAnon, {n1:,} images against {n0:,} ({n1 / n0:.0f}x the data), targets "
              f"<= {GROWTH}x and <= {PEAK_GIB} GiB:")
        for key, what in (("prepare_gib", "prepare"), ("train_gib", "one training epoch")):
            ratio, peak = last[key] / first[key], max(r[key] for _, r in rows)
            ok = ratio <= GROWTH and peak <= PEAK_GIB
            print(f"  {what}: {first[key]:.3f} -> {last[key]:.3f} GiB = {ratio:.2f}x, "
                  f"peak {peak:.3f} GiB: {'met' if ok else 'MISSED'}")
        if not args.skip_throughput:
            rates = throughput(work / f"project{n0}" / "data" / "prepared")
            med = {k: float(np.median(v)) for k, v in rates.items()}
            ratio = med["per batch from disk"] / med["tensors in memory"]
            print(f"\nfit() throughput on {n0:,} images, median of 3 alternating rounds: "
                  + ", ".join(f"{k} {v:.0f} samples/s" for k, v in med.items())
                  + f"; ratio {ratio:.2f} (target >= 0.9): {'met' if ratio >= 0.9 else 'MISSED'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
