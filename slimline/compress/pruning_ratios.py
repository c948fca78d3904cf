"""Per-layer ratios for structured pruning, chosen by a sensitivity scan (prune.ratios).

Uniform pruning removes `amount` of every layer's channels, though layers differ in how much
they can lose. The scan prunes each channel group alone (Torch-Pruning's dependency groups,
so a residual stage counts as one) by each of a few ratios and records the validation
accuracy drop, without fine-tuning. `allocate` then picks one drop threshold for all layers
(each layer's ratio is the largest whose interpolated drop stays under it) and moves the
threshold until the pruned model has the FLOPs that uniform pruning at `amount` gives: the
same budget, spent where it costs least.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from slimline.model import count_flops
from slimline.timebudget import time_budget

Evaluate = Callable[[nn.Module], float]  # evaluate(model) -> validation accuracy
_EPS = 1e-6  # slope added to each drop curve so that it is strictly increasing, hence invertible
# Halvings of the threshold interval. The widths are a step function of the threshold, so lo and
# hi can close in on a step without ever giving equal widths; 40 halvings resolve 1e-12.
_BISECTIONS = 40
GRAPH = "Torch-Pruning's dependency graph"  # the step a time budget names (prune.graph_timeout_s)


def pruner(model: nn.Module, example: torch.Tensor, ignored: list[nn.Module], amount: float,
           ratios: dict[nn.Module, float] | None = None, steps: int = 1,
           budget: float | None = None) -> tp.pruner.BasePruner:
    """Torch-Pruning's pruner as every structured path here uses it: group L2 magnitude,
    `amount` of every group's channels, or the group of each module in `ratios` its own,
    reached after `steps` linear steps. Traced in eval mode: a BatchNorm1d rejects a batch
    of one in train mode, and the trace must not update BatchNorm statistics. Building it
    (the graph and all its groups) gets `budget` seconds; else OutOfTime."""
    was_training = model.training
    model.eval()
    try:
        with time_budget(budget, GRAPH):
            return tp.pruner.BasePruner(model, example,
                                        importance=tp.importance.GroupMagnitudeImportance(p=2),
                                        pruning_ratio=amount, pruning_ratio_dict=ratios or {},
                                        iterative_steps=steps, ignored_layers=ignored)
    finally:
        model.train(was_training)


def step(built: tp.pruner.BasePruner, budget: float | None = None) -> None:
    """One pruning step within `budget` seconds: it walks every group of the graph again."""
    with time_budget(budget, GRAPH):
        built.step()


def groups(model: nn.Module, example: torch.Tensor, ignored: list[nn.Module],
           budget: float | None = None) -> dict[str, int]:
    """{module path of each prunable group's root layer: its output channels}, in model order.
    A root is the Conv2d/Linear whose output channels the group removes; coupled layers (a
    residual stage, the next layer's inputs, BatchNorm) follow it. The first thing structured
    pruning does, so where a model Torch-Pruning cannot trace fails (or runs past `budget`)."""
    names = {m: n for n, m in model.named_modules()}
    was_training = model.training
    model.eval()  # tracing must not touch BatchNorm statistics
    try:
        with time_budget(budget, GRAPH):
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
            roots = {group[0].dep.target.module for group in
                     graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear])}
    finally:
        model.train(was_training)
    return {names[m]: graph.get_out_channels(m) for m in model.modules() if m in roots}


def prune_copy(model: nn.Module, example: torch.Tensor, ignored: list[str], ratios: dict[str, float],
               default: float = 0.0, budget: float | None = None) -> nn.Module:
    """A copy of the model with each named group pruned by its ratio (others by `default`),
    in one Torch-Pruning step. The model itself is untouched."""
    model = copy.deepcopy(model).eval()
    modules = dict(model.named_modules())
    built = pruner(model, example, [modules[n] for n in ignored], default,
                   {modules[n]: r for n, r in ratios.items()}, budget=budget)
    step(built, budget)
    return model


@dataclasses.dataclass
class Layer:
    name: str  # module path of the group's root layer
    channels: int  # before pruning
    drops: dict[float, float]  # scan ratio -> val accuracy drop (fraction) with this group alone pruned


def scan(model: nn.Module, example: torch.Tensor, ignored: list[str], evaluate: Evaluate,
         channels: dict[str, int], ratios: list[float], budget: float | None = None) -> list[Layer]:
    """Prune each group (`channels`, from `groups`) alone by each ratio and measure the
    validation accuracy drop. Each pruned copy's graph gets `budget` seconds."""
    base = float(evaluate(model))

    def drop(name: str, ratio: float) -> float:
        c = channels[name]
        return base - float(evaluate(prune_copy(model, example, ignored, {name: tp_ratio(_kept(ratio, c), c)},
                                                budget=budget)))

    return [Layer(name, c, {r: drop(name, r) for r in ratios}) for name, c in channels.items()]


def _kept(ratio: float, channels: int) -> int:
    """Channels a layer keeps at this ratio, as Torch-Pruning counts them for uniform pruning
    (rounded down), and at least one (it skips a group that would keep none)."""
    return max(1, int(channels * (1 - ratio) + 1e-9))


def tp_ratio(kept: int, channels: int) -> float:
    """The ratio to hand Torch-Pruning for exactly `kept` channels: it keeps int(channels *
    (1 - ratio)), so aim half a channel above `kept` to be safe from float rounding."""
    return 1 - (kept + 0.5) / channels


def _curve(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """(ratios, drops) from (0, 0) through the scan, made monotone: a larger ratio never costs less."""
    r = np.array([0.0, *sorted(layer.drops)])
    drop = np.maximum.accumulate(np.maximum(0.0, [0.0, *(layer.drops[x] for x in sorted(layer.drops))]))
    return r, drop


def _kept_at(layer: Layer, threshold: float) -> int:
    """Channels kept at the largest ratio whose interpolated drop stays at or under threshold."""
    r, drop = _curve(layer)
    return _kept(float(np.interp(threshold, drop + _EPS * r, r)), layer.channels)


def _drop_of(layer: Layer, kept: int) -> float:
    """The interpolated drop of this layer alone pruned to `kept` channels."""
    return float(np.interp(1 - kept / layer.channels, *_curve(layer)))


@dataclasses.dataclass
class Allocation:
    kept: dict[str, int]  # group root -> channels it keeps
    channels: dict[str, int]  # group root -> channels before pruning
    threshold: float  # the common drop threshold of the bisection (before the one-layer move)
    flops: int  # of the model pruned to these widths
    target_flops: int  # of the model pruned uniformly by `amount`
    base_flops: int  # unpruned

    def ratios(self) -> dict[str, float]:
        """For Torch-Pruning's pruning_ratio_dict."""
        return {n: tp_ratio(k, self.channels[n]) for n, k in self.kept.items()}

    def short_by(self) -> float:
        """How much of the uniform FLOPs reduction these widths miss (0 when they reach it)."""
        return max(0.0, (self.flops - self.target_flops) / (self.base_flops - self.target_flops))


def allocate(model: nn.Module, example: torch.Tensor, ignored: list[str], layers: list[Layer],
             amount: float, input_shape: tuple[int, int, int], budget: float | None = None) -> Allocation:
    """Per-layer widths from the scan that remove as many FLOPs as `amount` does uniformly.
    FLOPs are measured on pruned copies, so channel rounding and coupled layers count as
    they are. Two steps:

    1. bisect on the common drop threshold;
    2. move one layer's width (never past its largest scan ratio) to land closest to the
       target. A channel of a small layer can hold a large share of the FLOPs (it feeds
       every channel of the next conv), so the threshold alone can miss by that much.
       Among the moves that land within 1% of the reduction, the one with the least
       summed drop wins.

    When even every layer at its largest scan ratio keeps more FLOPs than the target, that
    is returned, and `short_by` says by how much. Each pruned copy's graph gets `budget` seconds.
    """
    channels = {layer.name: layer.channels for layer in layers}
    seen: dict[tuple, int] = {}

    def flops(kept: dict[str, int]) -> int:
        key = tuple(sorted(kept.items()))
        if key not in seen:
            ratios = {n: tp_ratio(k, channels[n]) for n, k in kept.items()}
            seen[key] = count_flops(prune_copy(model, example, ignored, ratios, budget=budget).cpu(),
                                    input_shape)
        return seen[key]

    def widths(threshold: float) -> dict[str, int]:
        return {layer.name: _kept_at(layer, threshold) for layer in layers}

    def moved(kept: dict[str, int], layer: Layer) -> dict[str, int]:
        """kept, with this layer's width the one (FLOPs grow with it) closest to the target."""
        a, b = _kept(max(layer.drops), layer.channels), layer.channels  # bisect for the smallest
        floor = a  # width whose FLOPs reach the target, no narrower than the scan went
        while a < b:
            w = (a + b) // 2
            a, b = (w + 1, b) if flops({**kept, layer.name: w}) < target else (a, w)
        return min(({**kept, layer.name: w} for w in {max(floor, a - 1), a}),
                   key=lambda k: abs(flops(k) - target))

    base = count_flops(copy.deepcopy(model).cpu(), input_shape)
    target = count_flops(prune_copy(model, example, ignored, {}, amount, budget).cpu(), input_shape)
    lo, hi = 0.0, max(max(layer.drops.values(), default=0.0) for layer in layers) + 1.0
    if flops(widths(hi)) > target:  # every layer at its largest scanned ratio is not enough
        return Allocation(widths(hi), channels, hi, flops(widths(hi)), target, base)
    best = hi
    for _ in range(_BISECTIONS):
        if widths(lo) == widths(hi):
            break  # no width changes between lo and hi: nothing finer to find
        mid = (lo + hi) / 2
        if abs(flops(widths(mid)) - target) < abs(flops(widths(best)) - target):
            best = mid
        lo, hi = (mid, hi) if flops(widths(mid)) > target else (lo, mid)
    tolerance = 0.01 * (base - target)
    kept = min([widths(best), *(moved(widths(best), layer) for layer in layers)],
               key=lambda k: (max(0.0, abs(flops(k) - target) - tolerance),
                              sum(_drop_of(layer, k[layer.name]) for layer in layers)))
    return Allocation(kept, channels, best, flops(kept), target, base)
