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
    in_size: tuple[int, int] | None = None  # the spatial size of its (first) input, when 4-D


@dataclass(frozen=True)
class HintPair:
    teacher: str
    student: str
    teacher_channels: int
    student_channels: int
    size: tuple[int, int]


def _spatial(shape: torch.Size, image: tuple[int, int]) -> bool:
    """Whether a 4-D shape reads as (N, C, H, W) of this image: no larger and with its aspect
    ratio up to rounding. A channels-last map (N, H, W, C), as inside ConvNeXt or Swin
    blocks, fails it and is skipped rather than paired by the wrong axes."""
    (h, w), (ih, iw) = shape[2:], image
    return h <= ih and w <= iw and abs(h * iw - w * ih) <= max(ih, iw)


@torch.no_grad()
def feature_maps(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, FeatureMap]:
    """Every named module whose output is a (N, C, H, W) feature map, from one forward of a
    zero batch in eval mode (the model's mode is restored)."""
    image = tuple(input_shape[1:3])
    ends: dict[str, tuple[int, torch.Size, tuple[int, int] | None]] = {}
    calls: dict[str, int] = {}

    def hook(name, module, args, out):
        calls[name] = calls.get(name, 0) + 1
        if isinstance(out, torch.Tensor) and out.ndim == 4 and _spatial(out.shape, image):
            x = args[0] if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4 else None
            # forwards ended so far: the order
            ends[name] = (sum(calls.values()), out.shape, tuple(x.shape[2:]) if x is not None else None)

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
    return {name: FeatureMap(name, shape[1], (shape[2], shape[3]), order, name in learned, calls[name],
                             in_size)
            for name, (order, shape, in_size) in ends.items()}


def timm_stages(model: nn.Module) -> set[str] | None:
    """The stage ends a timm model declares (its `feature_info`, what timm's own feature
    extraction uses), as names in `model`; None for a model without them."""
    for prefix, m in model.named_modules():
        info = getattr(m, "feature_info", None)
        if isinstance(info, list) and info and all(isinstance(d, dict) and "module" in d for d in info):
            return {f"{prefix}.{d['module']}" if prefix else d["module"] for d in info}
    return None


def _inside_strided_block(m: FeatureMap, maps: dict[str, FeatureMap]) -> bool:
    """Whether `m` is at the input size of a block that downsamples: an enclosing module run
    once that takes m's size in, gives another out, and has only those two sizes inside. The
    widening 1x1 conv of a bottleneck or inverted residual is such a module: it runs at the
    old resolution but belongs to the next stage. A stage container (many sizes inside) is
    not such a block, so the stages it holds still count."""
    parts = m.name.split(".")
    for i in range(1, len(parts)):
        a = maps.get(".".join(parts[:i]))
        if a is None or a.calls != 1 or a.in_size != m.size or a.size == m.size:
            continue
        inner = {x.size for x in maps.values() if x.name.startswith(a.name + ".") and x.size != (1, 1)}
        if inner <= {m.size, a.size}:
            return True
    return False


def stage_ends(maps: dict[str, FeatureMap],
               declared: set[str] | None = None) -> dict[tuple[int, int], FeatureMap]:
    """The last block of each resolution stage: per spatial size, the last module to finish
    whose output has that size and that runs once.

    Among the modules a model declares (timm's feature_info) when it does. Otherwise among
    modules with parameters, skipping 1x1 maps (squeeze-excite gates, pooled heads) and the
    first layers of a strided block. Parameter-free modules (the input normalisation,
    activations, pooling) are skipped, so for a plain conv block this is the conv (or its
    BatchNorm): pre-activation features, which keep the teacher's negative responses (Heo et
    al. 2019); for a residual model it is each stage."""
    ends: dict[tuple[int, int], FeatureMap] = {}
    for m in sorted(maps.values(), key=lambda m: m.order):
        if m.calls != 1:
            continue
        if declared:
            if m.name in declared:
                ends[m.size] = m
        elif m.learned and m.size != (1, 1) and not _inside_strided_block(m, maps):
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
                why = ("runs more than once per forward" if m
                       else "is not a module whose output is a feature map")
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
    """The hint loss and its adapters. The module's state is the adapters alone; attach()
    hooks the paired modules of the student and the teacher, detach() removes the hooks."""

    def __init__(self, teacher: nn.Module, pairs: list[HintPair], weight: float, seed: int):
        super().__init__()
        if not pairs:
            raise ValueError("FeatureHints needs at least one pair")
        self.pairs, self.weight = list(pairs), weight
        self._teachers = [teacher]  # a list, not an attribute: its parameters are not ours to train
        # Own seeded stream: adding hints leaves every global generator (dropout) where it was.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            self.adapters = nn.ModuleList(nn.Conv2d(p.student_channels, p.teacher_channels, 1)
                                          for p in self.pairs)
        self._student: dict[int, torch.Tensor] = {}
        self._teacher: dict[int, torch.Tensor] = {}
        self._handles: list = []

    # Copies, not the outputs themselves: an in-place activation after the module (ReLU(inplace=True))
    # would otherwise overwrite the captured map before the loss reads it.
    def _keep_teacher(self, i, module, args, out):
        self._teacher[i] = out.detach().clone()

    def _keep_student(self, i, module, args, out):
        if torch.is_grad_enabled():  # a training step, not an evaluation
            self._student[i] = out.clone()

    def attach(self, student: nn.Module) -> "FeatureHints":
        """Hook the paired modules of both models and move the adapters to the student's device."""
        self.detach()
        self.to(next(student.parameters()).device)
        for model, role, keep in ((student, "student", self._keep_student),
                                  (self._teachers[0], "teacher", self._keep_teacher)):
            modules = dict(model.named_modules())
            self._handles += [modules[getattr(p, role)].register_forward_hook(partial(keep, i))
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
