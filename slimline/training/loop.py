"""The one training loop, shared by every stage that trains a network.

Determinism: all randomness comes from seeded generators. Batch order and
augmentation use a generator seeded from (seed, epoch), and dropout uses the
global torch RNG whose state is checkpointed, so a run resumed after SIGKILL
ends bit-identical to an uninterrupted one (on CPU, same thread count).

Under torchrun (slimline.training.distributed) the same loop runs in every rank, the
model wrapped in DistributedDataParallel; each rank's dropout stream is its own and
checkpointed with the others.
"""
from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimline import numerics as numerics_mod
from slimline.data.augment import Augment
from slimline.data.loader import batches, in_order
from slimline.errors import StageError
from slimline.params import LoaderParams, TrainParams
from slimline.training import distributed
from slimline.training.checkpoint import CheckpointStore, rng_state, set_rng_state
from slimline.training.distributed import Ranks

# loss_fn(logits, x_batch, y_batch) -> scalar loss; distillation passes its own.
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_device(pref: str) -> torch.device:
    if pref == "cuda" and not torch.cuda.is_available():
        raise StageError("train.device is 'cuda' but no CUDA device is visible: "
                           "set train.device to 'auto' or 'cpu', or install a CUDA build of torch")
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        ranks = distributed.current()
        return torch.device("cuda", ranks.local_rank) if ranks.active else torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int, num_threads: int, numerics: str = numerics_mod.DEFAULT) -> dict:
    """Seed every generator and fix the CPU math; returns the numerics state for the run record."""
    state = numerics_mod.apply(numerics, num_threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # A different thread count changes float summation order, so fix it.
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return state


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to +/- max_shift pixels, filling with zeros (background)."""
    if max_shift == 0:
        return x
    b, c, h, w = x.shape
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen).to(x.device)
    padded = F.pad(x, (max_shift,) * 4)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


EVAL_PIXELS = 1 << 22  # input values per evaluation batch: bounds its activations' memory


def eval_batch_size(image_shape: tuple[int, ...]) -> int:
    """1,000 digits a batch, fewer larger images: 341 of 64x64 RGB, 32 of 224x224."""
    return min(1000, max(32, EVAL_PIXELS // int(np.prod(image_shape))))


@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int | None = None, autocast: bool = False,
             loader: LoaderParams | None = None, ranks: Ranks | None = None) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) in eval mode, over a split read per batch
    (data: a prepared Split, or an (x, y) pair of arrays or tensors); batch_size None:
    eval_batch_size() of its images. ranks: every rank of a distributed job calls it, each
    reads its own shard, and the sums are reduced: the whole split's figures."""
    ranks = ranks or Ranks()
    was_training = model.training
    model.eval()
    device = model_device(model)
    n = len(data[1])
    batch_size = batch_size or eval_batch_size(tuple(data[0].shape[1:]))
    part = distributed.shard(n, ranks)
    rows = [slice(s.start + part.start, s.stop + part.start)
            for s in in_order(part.stop - part.start, batch_size)]
    distributed.sync_buffers(model, ranks)
    loss_sum, correct = 0.0, 0
    for xb, yb in batches(data, rows, device, loader):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(xb.float()).float()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    loss_sum, correct = distributed.all_sum([loss_sum, correct], ranks, device)
    model.train(was_training)
    return loss_sum / max(n, 1), correct / max(n, 1)


def make_optimizer(model: nn.Module, cfg: TrainParams,
                   extra: Optional[nn.Module] = None) -> torch.optim.Optimizer:
    params = [*model.parameters(), *(extra.parameters() if extra is not None else ())]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt, cfg: TrainParams, total_steps: int):
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one dict of metrics per epoch
    resumed_from: int = 0  # epochs already done when this process started
    train_seconds: float = 0.0  # wall time spent training in this process
    samples_seen: int = 0  # training samples processed in this process


def fit(model: nn.Module, train, val, cfg: TrainParams, store: CheckpointStore,
        loss_fn: Optional[LossFn] = None, on_epoch: Optional[Callable[[dict], None]] = None,
        desc: str = "train", extra: Optional[nn.Module] = None,
        loader: Optional[LoaderParams] = None) -> FitResult:
    """Train `model` (already on its device) in place on the train split, read per batch.

    train, val: prepared Splits (memory-mapped files), or (x, y) pairs of arrays or
    tensors. loader: how batches are read (DataLoader workers); it never changes a result.
    Under torchrun, every rank calls it: the model trains wrapped in DDP, rank 0 writes
    the checkpoints (with every rank's RNG state) and calls on_epoch.

    Checkpoints after every epoch into `store` and resumes from its newest
    checkpoint. `on_epoch(metrics)` runs after each epoch (logging hooks).
    `extra`: training-only modules that loss_fn uses (feature-KD adapters). They
    train with the model, in its optimizer, and their state is checkpointed with
    it, so a resumed run stays bit-identical; they are not part of the model.
    """
    from tqdm import tqdm  # bar only on a terminal: tqdm disables itself otherwise (disable=None)

    device = model_device(model)
    autocast = device.type == "cuda"  # bf16 autocast on GPU; full fp32 on CPU for bit-exactness
    loss_fn = loss_fn or (lambda logits, xb, yb: F.cross_entropy(logits, yb))
    ranks = distributed.setup(device.type)
    n = len(train[1])
    steps = len(distributed.step_rows(np.arange(n), cfg.batch_size, ranks))
    opt = make_optimizer(model, cfg, extra)
    trained = list(opt.param_groups[0]["params"])
    sched = make_scheduler(opt, cfg, cfg.epochs * steps)
    result = FitResult()

    state = store.latest()
    if state is not None:
        model.load_state_dict(state["model"])
        if extra is not None:
            extra.load_state_dict(state["extra"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        if ranks.active:  # this rank's own dropout stream
            _set_rank_rng(state, ranks)
        result.history = list(state["history"])
        result.resumed_from = int(state["epoch"])
        if ranks.writer:
            print(f"{desc}: resuming from checkpoint after epoch {result.resumed_from}", flush=True)
        for metrics in result.history:  # replay, so loggers hold the full curve
            if on_epoch:
                on_epoch(metrics)
    elif ranks.active:  # one dropout stream per rank; rank 0's is not one process's stream
        torch.manual_seed(cfg.seed * 1_000_003 + ranks.rank)
    net = model
    if ranks.active:  # after the checkpoint loads: DDP starts every rank from rank 0's weights
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    model.train()
    if extra is not None:
        extra.train()
    for epoch in range(result.resumed_from + 1, cfg.epochs + 1):
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen).numpy()
        # the rows of each step, fixed before any is read: workers cannot change the order
        rows = distributed.step_rows(order, cfg.batch_size, ranks)
        # each rank shifts its own images with shifts of its own
        shifts = gen if not ranks.active else \
            torch.Generator().manual_seed((cfg.seed * 100_003 + epoch) * 1_009 + ranks.rank)
        loss_sum, correct, seen = 0.0, 0, 0
        augment = Augment(cfg.seed, epoch, cfg.crop_scale, hflip=cfg.hflip)
        read = batches(train, rows, device, loader, augment if augment.active else None)
        bar = tqdm(read, total=steps, leave=False, disable=None if ranks.writer else True,
                   desc=f"{desc} epoch {epoch}/{cfg.epochs}", file=sys.stderr)
        for xb, yb in bar:
            xb = random_shift(xb.float(), cfg.augment_shift, shifts)  # uint8 pixels: float per batch
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = net(xb)
            loss = loss_fn(logits.float(), xb, yb)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{desc}: loss became {loss.item()} in epoch {epoch}; training diverged. "
                    f"Lower train.lr (now {cfg.lr}) or set train.grad_clip")
            opt.zero_grad(set_to_none=True)
            loss.backward()  # under DDP: the gradients are averaged over the ranks here
            distributed.average_grads(extra, ranks)
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
        elapsed = time.perf_counter() - start
        result.train_seconds += elapsed
        result.samples_seen += n
        # over all ranks (one process: the same numbers); N ranks count the padded rows too
        loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, seen], ranks, device)
        val_loss, val_acc = evaluate(model, val, autocast=autocast, loader=loader, ranks=ranks)
        metrics = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                   "val_loss": val_loss, "val_acc": val_acc}
        result.history.append(metrics)
        rank_rng = _rank_rng(ranks, device) if ranks.active else {}  # a collective: every rank joins
        if ranks.writer:
            print(f"{desc} epoch {epoch}/{cfg.epochs}: train_loss {metrics['train_loss']:.4f} "
                  f"train_acc {metrics['train_acc']:.4f} val_loss {val_loss:.4f} "
                  f"val_acc {val_acc:.4f} ({n / elapsed:.0f} samples/s)", flush=True)
            store.save(epoch, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": sched.state_dict(), "rng": rng_state(), "history": result.history,
                               **({"extra": extra.state_dict()} if extra is not None else {}), **rank_rng})
            if on_epoch:
                on_epoch(metrics)
    model.eval()
    if extra is not None:
        extra.eval()
    return result


def _rank_rng(ranks: Ranks, device: torch.device) -> dict:
    """Every rank's torch RNG state (dropout's stream), for rank 0's checkpoint."""
    state = {"rank_rng": distributed.all_gather_bytes(torch.get_rng_state(), ranks, device)}
    if device.type == "cuda":
        state["rank_rng_cuda"] = distributed.all_gather_bytes(torch.cuda.get_rng_state(device), ranks, device)
    return state


def _set_rank_rng(state: dict, ranks: Ranks) -> None:
    if len(state.get("rank_rng", ())) != ranks.world:
        raise StageError(f"the checkpoint holds the RNG state of {len(state.get('rank_rng', ()))} "
                         f"rank(s), not {ranks.world}: it is another run's; clear it with "
                         f"`make clean-resume`")
    torch.set_rng_state(state["rank_rng"][ranks.rank])
    if "rank_rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rank_rng_cuda"][ranks.rank], torch.cuda.current_device())


def make_finetune(cfg: TrainParams, data: dict, loss_fn: Optional[LossFn] = None,
                  loader: Optional[LoaderParams] = None):
    """finetune(model, epochs): the `cfg` recipe for a few epochs, no resume folder needed."""
    def finetune(model: nn.Module, epochs: int) -> None:
        if epochs <= 0:
            return
        with tempfile.TemporaryDirectory() as tmp:
            fit(model, data["train"], data["val"], cfg.model_copy(update={"epochs": epochs}),
                CheckpointStore(tmp), loss_fn=loss_fn, desc="finetune", loader=loader)
    return finetune
