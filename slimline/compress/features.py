"""Feature distillation (FitNets hints): which feature maps to match, and the adapters that
match them.

A hint pairs a teacher module with a student module whose outputs are feature maps of the
same height and width. A 1x1 conv adapter maps the student's channels to the teacher's, and
the hint loss is the MSE between the adapted student map and the teacher's (Romero et al.
2015). The adapters are training-only: they train with the student and go in its resume
checkpoints, but the student's forward never calls them, so they are never saved or
exported with it.

Modules are found by running one example through a model with forward hooks, so any
nn.Module works: the built-in CNN, a derived student, torchvision, timm or your own.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from slimline.errors import StageError


@dataclass(frozen=True)
class FeatureMap:
    """A module's output: (N, channels, *size), the `order`-th forward to end."""
    name: str
    channels: int
    size: tuple[int, int]
    order: int
    learned: bool  # the module (or one inside it) has parameters
    calls: int  # forwards per model forward: a module run twice has no one output to match


@dataclass(frozen=True)
class HintPair:
    teacher: str
    student: str
    teacher_channels: int
    student_channels: int
    size: tuple[int, int]


@torch.no_grad()
def feature_maps(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, FeatureMap]:
    """Every named module whose output is a 4-D tensor, from one forward of a zero batch in
    eval mode (the model's mode is restored)."""
    ends: dict[str, tuple[int, torch.Size]] = {}
    calls: dict[str, int] = {}

    def hook(name, module, args, out):
        calls[name] = calls.get(name, 0) + 1
        if isinstance(out, torch.Tensor) and out.ndim == 4:
            ends[name] = (sum(calls.values()), out.shape)  # forwards ended so far: the order

    handles = [m.register_forward_hook(partial(hook, name)) for name, m in model.named_modules() if name]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters(), torch.zeros(0)).device
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    learned = {name for name, m in model.named_modules() if next(m.parameters(), None) is not None}
    return {name: FeatureMap(name, shape[1], (shape[2], shape[3]), order, name in learned, calls[name])
            for name, (order, shape) in ends.items()}


def timm_stages(model: nn.Module) -> set[str] | None:
    """The stage ends a timm model declares (its `feature_info`, what timm's own feature
    extraction uses), as names in `model`; None for a model without them."""
    for prefix, m in model.named_modules():
        info = getattr(m, "feature_info", None)
        if isinstance(info, list) and info and all(isinstance(d, dict) and "module" in d for d in info):
            return {f"{prefix}.{d['module']}" if prefix else d["module"] for d in info}
    return None


def stage_ends(maps: dict[str, FeatureMap], declared: set[str] | None = None) -> dict[tuple[int, int], FeatureMap]:
    """The last block of each resolution stage: per spatial size, the last module to finish
    whose output has that size and that runs once.

    Among the modules a model declares (timm's feature_info) when it does; otherwise among
    modules with parameters. Parameter-free ones (the input normalisation, activations,
    pooling) are skipped, so for a plain conv block this is the conv (or its BatchNorm):
    pre-activation features, which keep the teacher's negative responses (Heo et al. 2019);
    for a residual stage it is the stage container. In a block that widens before it
    strides (an inverted residual) the last module at a size can be that block's expansion,
    which is why a timm model's own declaration is preferred."""
    ends: dict[tuple[int, int], FeatureMap] = {}
    for m in sorted(maps.values(), key=lambda m: m.order):
        if m.calls == 1 and (m.name in declared if declared else m.learned):
            ends[m.size] = m
    return dict(sorted(ends.items(), key=lambda kv: kv[1].order))


def model_stage_ends(model: nn.Module, input_shape: tuple[int, ...]) -> dict[tuple[int, int], FeatureMap]:
    return stage_ends(feature_maps(model, input_shape), timm_stages(model))


def auto_pairs(teacher: nn.Module, student: nn.Module, input_shape: tuple[int, ...]) -> list[HintPair]:
    """One pair per spatial size both models have, teacher's stage ends in order; [] when
    they share none (the stage then runs logit KD alone)."""
    t_ends = model_stage_ends(teacher, input_shape)
    s_ends = model_stage_ends(student, input_shape)
    return [_pair(t, s_ends[size]) for size, t in t_ends.items() if size in s_ends]


def check_pairs(teacher: nn.Module, student: nn.Module, input_shape: tuple[int, ...],
                names: list[tuple[str, str]]) -> list[HintPair]:
    """Explicit [teacher_module, student_module] pairs, checked: each module exists, outputs a
    feature map once per forward, and the two maps have the same height and width."""
    models = {"teacher": teacher, "student": student}
    found = {role: feature_maps(m, input_shape) for role, m in models.items()}
    pairs = []
    for t_name, s_name in names:
        ends = []
        for role, name in (("teacher", t_name), ("student", s_name)):
            m = found[role].get(name)
            if m is None or m.calls != 1:
                usable = ", ".join(f"{e.name} {e.channels}x{e.size[0]}x{e.size[1]}"
                                   for e in stage_ends(found[role], timm_stages(models[role])).values())
                why = "runs more than once per forward" if m else "is not a module whose output is a feature map"
                raise StageError(f"distill.features: {role} module {name!r} {why}. Its stage ends are: "
                                 f"{usable or 'none'}; or set distill.features: auto")
            ends.append(m)
        if ends[0].size != ends[1].size:
            raise StageError(f"distill.features: teacher {t_name!r} is {ends[0].size[0]}x{ends[0].size[1]} "
                             f"but student {s_name!r} is {ends[1].size[0]}x{ends[1].size[1]}: pair feature "
                             f"maps of the same height and width")
        pairs.append(_pair(*ends))
    return pairs


def _pair(t: FeatureMap, s: FeatureMap) -> HintPair:
    return HintPair(t.name, s.name, t.channels, s.channels, t.size)


class FeatureHints(nn.Module):
    """The hint loss and its adapters. The module's state is the adapters alone; the
    teacher's hooks live from construction to detach(), the student's from attach()."""

    def __init__(self, teacher: nn.Module, pairs: list[HintPair], weight: float, seed: int):
        super().__init__()
        if not pairs:
            raise ValueError("FeatureHints needs at least one pair")
        self.pairs, self.weight = list(pairs), weight
        # Own seeded stream: adding hints leaves the global RNG (dropout) where it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.adapters = nn.ModuleList(nn.Conv2d(p.student_channels, p.teacher_channels, 1)
                                          for p in self.pairs)
        self._student: dict[int, torch.Tensor] = {}
        self._teacher: dict[int, torch.Tensor] = {}
        modules = dict(teacher.named_modules())
        self._handles = [modules[p.teacher].register_forward_hook(partial(self._keep, self._teacher, i))
                         for i, p in enumerate(self.pairs)]

    @staticmethod
    def _keep(store, i, module, args, out):
        store[i] = out

    def _keep_training(self, i, module, args, out):
        if torch.is_grad_enabled():  # a training step, not an evaluation
            self._student[i] = out

    def attach(self, student: nn.Module) -> "FeatureHints":
        """Hook the student's paired modules and move the adapters to its device."""
        self.to(next(student.parameters()).device)
        modules = dict(student.named_modules())
        self._handles += [modules[p.student].register_forward_hook(partial(self._keep_training, i))
                          for i, p in enumerate(self.pairs)]
        return self

    def detach(self) -> None:
        """Remove every hook: the student and teacher are plain models again."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._student.clear()
        self._teacher.clear()

    def loss(self) -> torch.Tensor:
        """weight * the mean over pairs of MSE(adapter(student map), teacher map), for the
        batch both models have just seen."""
        if len(self._student) != len(self.pairs) or len(self._teacher) != len(self.pairs):
            raise RuntimeError("FeatureHints.loss() needs a student and a teacher forward of the same "
                               "batch first (is it attached?)")
        terms = [F.mse_loss(a(self._student[i].float()), self._teacher[i].float())
                 for i, a in enumerate(self.adapters)]
        self._student.clear()
        self._teacher.clear()
        return self.weight * torch.stack(terms).mean()


def describe_pairs(pairs: list[HintPair]) -> str:
    """How a report names the pairs."""
    return ", ".join(f"`{p.teacher}` ({p.teacher_channels}) ← `{p.student}` ({p.student_channels}) "
                     f"at {p.size[0]}×{p.size[1]}" for p in pairs)


def resolve_pairs(features, teacher: nn.Module, student: nn.Module,
                  input_shape: tuple[int, ...]) -> list[HintPair]:
    """distill.features made concrete: [] for off, and for an auto that finds no pair."""
    if features == "off":
        return []
    if features == "auto":
        pairs = auto_pairs(teacher, student, input_shape)
        if not pairs:
            print("distill.features: auto found no feature maps of the same size in the teacher and the "
                  "student: logit KD only", flush=True)
        return pairs
    return check_pairs(teacher, student, input_shape, list(features))
