"""The student to distil into: a params network of its own, or derived from the teacher's
architecture with every channel group uniformly shrunk (for models with no small sibling)."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
from torch import nn

from slimline.errors import StageError
from slimline.model import ModelSpec, build_model, count_params
from slimline.params import Structure, StudentParams
from slimline.training.trainer import network_spec
from slimline.weights import weights_init

Init = Callable[[nn.Module], nn.Module]


def _round8(width: float) -> int:
    return max(8, int(round(width / 8)) * 8)


def student_plan(student: StudentParams, teacher: ModelSpec,
                 budget: float | None = None) -> tuple[ModelSpec, Init | None]:
    """(spec, init hook) of the student, for the data the teacher was built for;
    train_network builds spec, then applies init.

    A derived student has the teacher's architecture at `derive.width` of its channels,
    rounded to a multiple of 8, classifier whole, freshly initialised: for the built-in
    cnn by scaling its widths, for other models by Torch-Pruning the untrained model,
    within `budget` seconds (prune.graph_timeout_s). Where Torch-Pruning cannot, init
    raises a StageError that says what to do instead."""
    if student.derive is None:
        spec = network_spec(student, teacher.input_shape, teacher.num_classes, teacher.mean, teacher.std)
        return spec, (weights_init(student.weights, spec.model) if student.weights else None)
    width = student.derive.width
    if teacher.model == "cnn":
        s = Structure.model_validate(teacher.structure)
        shrunk = s.model_copy(update={"conv_channels": [_round8(c * width) for c in s.conv_channels],
                                      "hidden": [_round8(h * width) for h in s.hidden]})
        return replace(teacher, structure=shrunk.model_dump()), None
    from slimline.compress.pruning import GraphUnavailable, derive

    example = torch.zeros(2, *teacher.input_shape)

    def init(model: nn.Module) -> nn.Module:
        try:
            return derive(model, example, width, budget)
        except GraphUnavailable as why:
            raise StageError(cannot_derive(teacher.model, why)) from None

    return replace(teacher, reshaped={}), init


def cannot_derive(model: str, why) -> str:
    """The params error of a derive that Torch-Pruning cannot do (why: a GraphUnavailable)."""
    more = " (or raise prune.graph_timeout_s)" if why.timed_out else ""
    return (f"student.derive: no student can be derived from {model}: {why}. Name the student "
            f"explicitly instead: student.model: <a smaller model>, student.derive: null{more}")


def describe(spec: ModelSpec, student: StudentParams) -> str:
    """How a report names the student."""
    if spec.model == "cnn" and student.derive is None:
        return f"`{spec.structure['conv_channels']}` conv / `{spec.structure['hidden']}` hidden"
    how = f", derived from the baseline at width {student.derive.width:g}" if student.derive else ""
    what = (f"conv `{spec.structure['conv_channels']}` / hidden `{spec.structure['hidden']}`"
            if spec.model == "cnn" else f"`{spec.model}`")
    return what + how


def size(spec: ModelSpec, init: Init | None) -> int:
    """Parameters of the student as it will be trained."""
    model = build_model(spec)
    return count_params(init(model) if init else model)
