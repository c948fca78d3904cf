"""Training-step throughput: the pipeline's loop against a minimal hand-written loop,
and portable against fast CPU numerics (train.numerics).

    python -m benchmarks.train_loop [--epochs 3] [--rounds 3] [--threads 2] [--device cpu|cuda]

Same model (the baseline structure), same data (the prepared MNIST digits),
same threads, same optimizer and schedule. Two ratios are printed:
- training steps: the time fit() spends in its epoch loops (its per-step
  bookkeeping: metrics, divergence check, progress bar) against the minimal
  loop. Target: >= 0.95.
- whole fit(): also counts the per-epoch validation pass and checkpoint
  write, which the minimal loop does not do at all.
- portable / fast: fit() throughput with train.numerics portable against fast, each
  in a fresh process (the mode is fixed when torch loads). Target: >= 0.7.
Rounds alternate which side runs first, since this machine is shared and noisy.
"""
from __future__ import annotations

import tasks  # noqa: F401  (first: pins CPU math for params.yaml's train.numerics)

# isort: split

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.fit_setup import load_data, new_model
from benchmarks.numerics import params_file, run_child
from slimline.params import load_params
from slimline.training.checkpoint import CheckpointStore
from slimline.training.loop import fit, make_optimizer, make_scheduler, seed_everything


def pipeline_loop(params, cfg, train, val) -> tuple[float, float]:
    """(seconds in training steps, seconds for the whole fit() call)."""
    seed_everything(cfg.seed, cfg.num_threads, cfg.numerics)
    model = new_model(params, tuple(train[0].shape[1:]), train[0].device)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = fit(model, train, val, cfg, CheckpointStore(tmp), desc="pipeline")
        return result.train_seconds, time.perf_counter() - start


def minimal_loop(params, cfg, train, val) -> tuple[float, float]:
    """What a person writes by hand: shuffle, forward, loss, backward, step."""
    seed_everything(cfg.seed, cfg.num_threads, cfg.numerics)
    model = new_model(params, tuple(train[0].shape[1:]), train[0].device)
    x, y = train
    steps = (len(x) + cfg.batch_size - 1) // cfg.batch_size
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, cfg.epochs * steps)
    cuda = x.device.type == "cuda"
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), device=x.device)
        for i in range(steps):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = F.cross_entropy(model(x[idx]).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:  # the same recipe as the pipeline's
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return wall, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="default: train.num_threads")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    params = load_params()
    # Augmentation off on both sides: this measures loop overhead, not the shift's arithmetic.
    cfg = params.train.model_copy(update={"epochs": args.epochs, "augment_shift": 0, "device": args.device,
                                          "num_threads": args.threads or params.train.num_threads})
    device = torch.device(args.device)
    train, val = load_data(device)
    n = len(train[0]) * args.epochs
    steps = {"pipeline": [], "minimal": []}
    walls = {"pipeline": [], "minimal": []}
    loops = {"pipeline": pipeline_loop, "minimal": minimal_loop}
    for r in range(args.rounds):
        order = ["pipeline", "minimal"] if r % 2 == 0 else ["minimal", "pipeline"]
        for name in order:
            step_s, wall_s = loops[name](params, cfg, train, val)
            steps[name].append(step_s)
            walls[name].append(wall_s)
        print(f"round {r + 1}: " + ", ".join(f"{k} {n / v[-1]:.0f} samples/s" for k, v in steps.items()),
              flush=True)
    med = {k: statistics.median(v) for k, v in steps.items()}
    wall = {k: statistics.median(v) for k, v in walls.items()}
    print(f"\ndevice {device}, {cfg.num_threads} threads, {len(train[0])} samples x {args.epochs} epochs, "
          f"batch {cfg.batch_size}, {args.rounds} rounds (median)")
    print(f"pipeline steps: {n / med['pipeline']:.0f} samples/s; "
          f"minimal loop: {n / med['minimal']:.0f} samples/s")
    print(f"ratio pipeline/minimal, training steps: {med['minimal'] / med['pipeline']:.3f} (target >= 0.95)")
    print(f"ratio pipeline/minimal, whole fit() incl. validation + checkpoints: "
          f"{wall['minimal'] / wall['pipeline']:.3f}")
    if args.device == "cpu":
        compare_numerics(args, len(train[0]), cfg.num_threads)


def compare_numerics(args, samples: int, threads: int) -> None:
    """fit() samples/s in portable and in fast mode, fresh processes, alternating order."""
    speed = {"portable": [], "fast": []}
    with tempfile.TemporaryDirectory() as tmp:
        files = {m: params_file(Path(tmp), m, threads) for m in speed}
        for r in range(args.rounds):
            for mode in (["portable", "fast"] if r % 2 == 0 else ["fast", "portable"]):
                speed[mode].append(run_child(files[mode], samples, args.epochs)["samples_per_s"])
            print(f"round {r + 1}: " + ", ".join(f"{m} {v[-1]:.0f} samples/s" for m, v in speed.items()),
                  flush=True)
    med = {m: statistics.median(v) for m, v in speed.items()}
    print(f"\nfit() with augmentation, {threads} threads: portable {med['portable']:.0f} samples/s, "
          f"fast {med['fast']:.0f} samples/s")
    print(f"ratio portable/fast: {med['portable'] / med['fast']:.3f} (target >= 0.7)")


if __name__ == "__main__":
    main()
