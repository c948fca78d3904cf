"""Data-parallel training: a training stage relaunched under torchrun, one process per rank.

`train.distributed.nproc_per_node: N` (N > 1) makes a training stage start
`python -m torch.distributed.run --standalone --nproc_per_node N -m tasks.<stage> ...`
and wait for it. Each rank runs the same stage body:
- the model is wrapped in DistributedDataParallel (gloo on CPU, nccl on CUDA);
- each step's global batch of `train.batch_size` rows is split across the ranks the way
  DistributedSampler splits an epoch (rank r takes every N-th row, padded to a multiple
  of N), so N ranks see the same rows per step that one process would;
- validation and test accuracy are summed over disjoint shards of the whole split (no
  padding) and reduced, so they are the full split's;
- rank 0 alone writes outputs, reports and checkpoints; a checkpoint holds every rank's
  RNG state, because dropout draws on each.

torchrun ends every rank when one fails; each rank also dies with the agent, and the
agent with the stage process, so no rank outlives the stage (slimline.repo.die_with_parent).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from slimline.errors import StageError
from slimline.repo import die_with_parent

LAUNCHED = "SLIMLINE_DISTRIBUTED"  # set for the ranks: a rank never relaunches itself
ERRORS = "SLIMLINE_RANK_ERRORS"  # a folder where a failing rank leaves its one-line error
# A collective that waits longer than this ends the stage instead of hanging it: a rank
# stuck without dying. Long enough for rank 0's writes and a large validation.
TIMEOUT_S = 1800


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        """Only rank 0 writes files."""
        return self.rank == 0


def current() -> Ranks:
    """The ranks torchrun set for this process (its environment), or one process."""
    if os.environ.get(LAUNCHED) != "1":
        return Ranks()
    return Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_rank(num_threads: int, nproc: int) -> int:
    """train.num_threads is the stage's: N ranks share it, so they never oversubscribe it."""
    return max(1, num_threads // nproc)


def _cuda_devices(device: str) -> int | None:
    """The CUDA devices the ranks would train on; None: they train on the CPU. torch (2 s to
    import) is asked only where an NVIDIA driver is loaded: without one, `auto` is the CPU."""
    if device == "cpu" or (device == "auto" and not Path("/proc/driver/nvidia/gpus").is_dir()):
        return None
    import torch

    return torch.cuda.device_count() if device == "cuda" or torch.cuda.is_available() else None


def check(nproc: int, device: str, batch_size: int) -> None:
    """Refuse a rank count the machine or the recipe cannot hold, with the numbers."""
    have = _cuda_devices(device)
    if have is not None:
        if nproc > have:
            raise StageError(f"train.distributed.nproc_per_node is {nproc} but {have} CUDA device(s) "
                             f"are visible: one rank per GPU; lower it to {have} or fewer")
    else:
        have = usable_cpus()
        if nproc > have:
            raise StageError(f"train.distributed.nproc_per_node is {nproc} but this machine has {have} "
                             f"CPU core(s) to run on: lower it to {have} or fewer")
    if batch_size % nproc:
        raise StageError(f"train.batch_size {batch_size} does not split over {nproc} ranks: make it a "
                         f"multiple of train.distributed.nproc_per_node")


def relaunch(stage: str, nproc: int, num_threads: int, argv: list[str], module: str | None = None) -> None:
    """Run this stage (module: tasks.<stage>) again as `nproc` ranks under torchrun and wait;
    a failed rank ends it with that rank's error."""
    with tempfile.TemporaryDirectory(prefix="slimline-ranks-") as errors:
        env = {**os.environ, LAUNCHED: "1", ERRORS: errors,
               "OMP_NUM_THREADS": str(threads_per_rank(num_threads, nproc))}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "--max_restarts=0", "-m", module or f"tasks.{stage}", *argv]
        print(f"{stage}: training on {nproc} ranks: {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)  # the agent dies with us
        try:
            rc = proc.wait()
        except BaseException:  # SIGINT/SIGTERM here: torchrun ends its ranks on SIGTERM
            proc.terminate()
            proc.wait()
            raise
        if rc:
            raise StageError(failure(Path(errors), nproc, rc))


def failure(errors: Path, nproc: int, rc: int) -> str:
    """The message for a failed torchrun: the first rank's own error, if it left one."""
    for path in sorted(errors.glob("rank-*.txt")):
        return f"rank {path.stem.split('-')[1]} of {nproc} failed: {path.read_text().strip()}"
    return (f"a rank of {nproc} died without an error of its own (torchrun exited {rc}): killed, out "
            f"of memory, or a crash whose traceback is in the log above. A rerun resumes from the "
            f"last epoch checkpoint")


def record_failure(message: str) -> None:
    """In a rank: leave this rank's error for the launcher to report."""
    folder, ranks = os.environ.get(ERRORS), current()
    if folder and ranks.active:
        (Path(folder) / f"rank-{ranks.rank}.txt").write_text(message)


def setup(device_type: str) -> Ranks:
    """Join the job's process group (once per process); a no-op for one process."""
    import torch
    import torch.distributed as dist

    ranks = current()
    if ranks.active and not dist.is_initialized():
        cuda = device_type == "cuda"
        if cuda:
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=TIMEOUT_S))
    return ranks


def finish() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------ in a rank

def step_rows(order, batch_size: int, ranks: Ranks) -> list:
    """This rank's rows of each step of an epoch, in order. One process: `order` cut into
    batches, a last batch of one image folded into the one before (BatchNorm cannot train on
    one). N ranks: the epoch's order split the way DistributedSampler splits a dataset (rank
    r takes every N-th row, the end padded from the start), then batches of batch_size / N,
    so that a step's rows across the ranks are the rows one process's step would take."""
    if ranks.active:
        from torch.utils.data import DistributedSampler

        mine = list(DistributedSampler(range(len(order)), num_replicas=ranks.world, rank=ranks.rank,
                                       shuffle=False))
        order, batch_size = order[mine], batch_size // ranks.world
    n = len(order)
    steps = (n + batch_size - 1) // batch_size
    if steps > 1 and n % batch_size == 1:
        steps -= 1
    return [order[i * batch_size:n if i == steps - 1 else (i + 1) * batch_size] for i in range(steps)]


def shard(n: int, ranks: Ranks) -> slice:
    """This rank's contiguous part of range(n) for evaluation: disjoint, no padding."""
    start, stop = n * ranks.rank // ranks.world, n * (ranks.rank + 1) // ranks.world
    return slice(start, stop)


def all_sum(values: list[float], ranks: Ranks, device) -> list[float]:
    """Each value summed over the ranks (float64)."""
    if not ranks.active:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_bytes(state, ranks: Ranks, device) -> list:
    """Every rank's copy of a uint8 tensor of one size (an RNG state), rank order."""
    import torch.distributed as dist

    t = state.to(device)
    parts = [t.clone() for _ in range(ranks.world)]
    dist.all_gather(parts, t)
    return [p.cpu() for p in parts]


def sync_buffers(model, ranks: Ranks) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) everywhere: each rank's last
    training forward updated its own, and evaluation and the saved model use rank 0's."""
    if ranks.active:
        import torch.distributed as dist

        for b in model.buffers():
            dist.broadcast(b, 0)


def average_grads(module, ranks: Ranks) -> None:
    """The mean gradient over the ranks of modules that train outside the DDP wrapper (the
    feature-KD adapters)."""
    if ranks.active and module is not None:
        import torch.distributed as dist

        for p in module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= ranks.world
