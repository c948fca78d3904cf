"""slimline check's model preflight: build, forward, ONNX export and Torch-Pruning graph of
the models params.yaml asks for, before any stage trains; cached by what it depends on.
A model Torch-Pruning cannot trace (or not within prune.graph_timeout_s) is refused only
for structured pruning and derive, in the preflight and in the stages alike."""
from __future__ import annotations

import time

import pytest
import torch
import torch_pruning as tp
from torch import nn

from slimline import preflight
from slimline.compress import pruning
from slimline.compress.sparsity import sparsity
from slimline.compress.student import student_plan
from slimline.errors import StageError
from slimline.model import ModelSpec, build_model
from slimline.params import PruneParams, StudentParams

SHAPE = (1, 16, 16)
DATA = {"source": "imagefolder", "path": "images", "image_size": list(SHAPE[1:]), "channels": SHAPE[0]}
DERIVED = {"derive": {"from": "baseline", "width": 0.5}}
TINY = "python:slimline.examples.tiny_resnet:build"


class FourierNet(nn.Module):
    """Runs in torch, but rfft2 has no ONNX export at opset 17."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(torch.fft.rfft2(self.conv(x)).abs().mean((2, 3)))


def fourier(num_classes: int, in_channels: int) -> nn.Module:
    return FourierNet(num_classes)


def wrong_output(num_classes: int, in_channels: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, num_classes + 1))


def test_an_unexportable_op_is_named_before_any_training(tmp_path):
    raw = {"baseline": {"model": "python:test_preflight:fourier"}}
    problems = preflight.check_models(raw, tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith("baseline (python:test_preflight:fourier): ONNX export failed")
    assert "aten::fft_rfft2" in problems[0] and "docs/own-model.md" in problems[0]


def test_wrong_logits_shape_and_the_cache(tmp_path, monkeypatch):
    raw = {"baseline": {"model": "python:test_preflight:wrong_output"}}
    (problem,) = preflight.check_models(raw, tmp_path)
    assert "returns shape (2, 11), not (batch, 10) logits" in problem

    good = {"baseline": {"model": "python:slimline.examples.tiny_resnet:build"},
            "student": {"derive": {"from": "baseline", "width": 0.5}}}
    assert preflight.check_models(good, tmp_path) == []
    monkeypatch.setattr(preflight, "_run", lambda *a: preflight.Outcome(["ran again"]))
    assert preflight.check_models(good, tmp_path) == []  # cached: a no-op check pays nothing
    good["baseline"]["kwargs"] = {"width": 8}
    assert preflight.check_models(good, tmp_path) == ["ran again"]  # a changed spec is checked anew


# --- models Torch-Pruning cannot trace ----------------------------------------------------

def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's stride-1 unit: half the channels pass, half go through a branch, then shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(channels // 2, channels // 2, 1), nn.ReLU())

    def forward(self, x):
        kept, changed = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((kept, self.branch(changed)), dim=1))


class Shuffled(nn.Module):
    """Three shuffle units in a row: Torch-Pruning 1.6 divides by zero inferring their channels,
    as on torchvision's shufflenet_v2_*."""

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.units = nn.Sequential(*(ShuffleUnit(8) for _ in range(3)))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.units(self.stem(x)).mean((2, 3)))


def shuffled(num_classes: int, in_channels: int) -> nn.Module:
    return Shuffled(num_classes, in_channels)


SHUFFLED = "python:test_preflight:shuffled"
REASON = "Torch-Pruning's dependency graph failed: ZeroDivisionError: integer division or modulo by zero"


def spec(model: str) -> ModelSpec:
    return ModelSpec(structure={}, input_shape=SHAPE, num_classes=10, mean=(0.5,), std=(0.25,), model=model)


def job(**cfg) -> pruning.PruneJob:
    return pruning.PruneJob(PruneParams(**{"amount": 0.5, "steps": 1, "finetune_epochs": 0, **cfg}),
                            example=torch.rand(2, *SHAPE), finetune=lambda m, e: None, evaluate=lambda m: 0.5)


def test_a_model_torch_pruning_cannot_trace_loses_only_structured_pruning_and_derive(tmp_path, capsys):
    with pytest.raises(ZeroDivisionError):  # the premise: Torch-Pruning really fails on it
        tp.DependencyGraph().build_dependency(Shuffled(10, 1).eval(), example_inputs=torch.zeros(2, *SHAPE))

    raw = {"data": DATA, "baseline": {"model": SHUFFLED}}
    assert preflight.check_models(raw, tmp_path) == []  # a note, not a failure
    err = capsys.readouterr().err
    assert f"preflight: baseline ({SHUFFLED}): Torch-Pruning's dependency graph ..." in err  # progress
    assert (f"note: baseline ({SHUFFLED}): {REASON}, so structured pruning and student.derive are not "
            f"applicable to it: prune@structured will write its not_applicable marker") in err
    # The same reason on every run, from the cache too: it ends up in a hashed DVC output.
    assert preflight.preflight(raw, tmp_path).untraceable \
        == preflight.preflight(raw, tmp_path / "b").untraceable \
        == [{"section": "baseline", "model": SHUFFLED, "reason": REASON, "timed_out": False}]

    (failure,) = preflight.check_models({**raw, "student": DERIVED}, tmp_path)
    assert failure.startswith(f"student (derive from {SHUFFLED} at width 0.5): student.derive: ")
    assert REASON in failure and "student.model: <a smaller model>, student.derive: null" in failure

    # The stages: prune@structured is not applicable, for the same reason; derive is a params error.
    with pytest.raises(pruning.NotApplicable) as info:
        pruning.PRUNERS["structured"](Shuffled(10, 1), spec(SHUFFLED), job(ratios="sensitivity"))
    assert str(info.value) == f"{REASON}; structured pruning needs that graph (take structured out of " \
                              f"prune.methods to skip it)"
    _, init = student_plan(StudentParams(**DERIVED), spec(SHUFFLED))
    with pytest.raises(StageError, match="student.derive: null"):
        init(Shuffled(10, 1))
    # Everything else runs on it: unstructured pruning, say.
    out = pruning.PRUNERS["unstructured"](Shuffled(10, 1), spec(SHUFFLED), job())
    assert sparsity(out.model)[0] < sparsity(Shuffled(10, 1))[0]


def test_error_text_is_the_same_every_run():
    err = RuntimeError("no group for <torch_pruning.dependency.Node object at 0x7f3a2b1c0d90> at "
                       "0x7f3a2b1c0d90.\nTraceback-like detail")
    assert pruning.error_text(err) == \
        "RuntimeError: no group for <torch_pruning.dependency.Node object> at <address>"
    assert pruning.error_text(ZeroDivisionError()) == "ZeroDivisionError"


def test_a_graph_past_its_budget_is_stopped_and_named(tmp_path, monkeypatch, capsys):
    def slow_graph(self, *args, **kwargs):  # a graph that would take minutes, as efficientvit_m0's
        time.sleep(60)

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", slow_graph)
    # The preflight, structured pruning off: a note for the baseline, and derive from it a
    # failure, both naming the time.
    raw = {"data": DATA, "baseline": {"model": TINY}, "prune": {"graph_timeout_s": 1, "methods": ["layer"]}}
    (failure,) = preflight.check_models({**raw, "student": DERIVED}, tmp_path)
    assert ("student.derive: no student can be derived from python:slimline.examples.tiny_resnet:build: "
            "Torch-Pruning's dependency graph took more than 1 s (prune.graph_timeout_s)") in failure
    assert "student.derive: null (or raise prune.graph_timeout_s)" in failure
    note = capsys.readouterr().err.splitlines()[-1]
    assert note.startswith(f"note: baseline ({TINY}): Torch-Pruning's dependency graph took more than 1 s "
                           f"(prune.graph_timeout_s)") and "raise prune.graph_timeout_s" in note
    # Structured pruning on: the run would stop at that graph, so the check fails.
    raw["prune"]["methods"] = ["structured"]
    (slow,) = preflight.check_models(raw, tmp_path)
    assert slow == (f"baseline ({TINY}): Torch-Pruning's dependency graph took more than 1 s "
                    f"(prune.graph_timeout_s), and prune@structured needs it: raise prune.graph_timeout_s, "
                    f"or take structured out of prune.methods")

    # The stages: both fail, naming the fix. Not "not applicable": a time limit must not
    # decide which versioned models exist.
    with pytest.raises(StageError, match=r"took more than 0\.2 s \(prune.graph_timeout_s\), so the stage "
                                         r"stopped rather than hang\. Raise prune.graph_timeout_s"):
        pruning.PRUNERS["structured"](build_model(spec(TINY)), spec(TINY), job(graph_timeout_s=0.2))
    _, init = student_plan(StudentParams(**DERIVED), spec(TINY), budget=0.2)
    with pytest.raises(StageError, match=r"took more than 0\.2 s .*student\.derive: null"):
        init(build_model(spec(TINY)))


def test_a_timm_model_of_one_input_size_is_told_the_kwarg(tmp_path):
    kwargs = {"patch_size": 8, "depth": 1}  # a one-block ViT: small and quick
    raw = {"data": DATA, "baseline": {"model": "timm:vit_tiny_patch16_224", "kwargs": kwargs}}
    (failure,) = preflight.check_models(raw, tmp_path)
    assert "forward on a (2, 1, 16, 16) batch failed" in failure
    assert "takes 224x224 images only" in failure and "baseline.kwargs: {img_size: [16, 16]}" in failure
    raw["baseline"]["kwargs"] = {**kwargs, "img_size": [16, 16]}
    assert preflight.check_models(raw, tmp_path) == []


class Branchy(nn.Module):
    """Exports to ONNX by tracing (one branch), but its branch on the data stops torch.export,
    which QAT's fake quantization needs."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, num_classes)

    def forward(self, x):
        h = self.conv(x)
        if h.mean() > 0:
            h = h.relu()
        return self.fc(h.mean((2, 3)))


def branchy(num_classes: int, in_channels: int) -> nn.Module:
    return Branchy(num_classes)


def test_a_model_qat_cannot_prepare_is_named_only_when_qat_asks_for_it(tmp_path, capsys):
    model = "python:test_preflight:branchy"
    raw = {"data": DATA, "baseline": {"model": model}}
    assert preflight.check_models(raw, tmp_path) == []  # QAT off: nothing to refuse
    (problem,) = preflight.check_models({**raw, "qat": {"enabled": True, "models": ["baseline"]}}, tmp_path)
    assert problem.startswith(f"baseline ({model}): QAT preparation (torch.export, fake int8) failed: ")
    line = Branchy.forward.__code__.co_firstlineno + 2  # the branch on the data
    assert (f"At test_preflight.py:{line} in forward: `if h.mean() > 0:`. Take baseline out of qat.models "
            f"(or set qat.enabled: false), or change the model") in problem
    capsys.readouterr()
    assert preflight.check_models({**raw, "qat": {"enabled": True, "models": ["baseline"]},
                                   "baseline": {"model": TINY}}, tmp_path) == []  # a model it prepares
    assert "simulates" not in capsys.readouterr().err  # and simulates whole: no note


def sigmoid_pooled(num_classes: int, in_channels: int) -> nn.Module:
    """A sigmoid whose output only an average pool reads: static int8 quantizes it, QAT's
    fake quantization does not. Two BatchNorm scales start at 0, as in timm's ResNets."""
    bn = nn.BatchNorm2d(4)
    nn.init.zeros_(bn.weight[:2])
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), bn, nn.Sigmoid(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, num_classes))


def test_what_qat_would_not_simulate_is_a_note_naming_the_op(tmp_path, capsys):
    qat = {"enabled": True, "models": ["baseline"]}
    model = "python:test_preflight:sigmoid_pooled"
    assert preflight.check_models({"data": DATA, "baseline": {"model": model}, "qat": qat}, tmp_path) == []
    err = capsys.readouterr().err
    assert (f"note: baseline ({model}): qat@baseline simulates 4 of the 5 tensors static int8 quantizes; "
            f"not those of Sigmoid /1/1.2/Sigmoid. Their int8 ranges come from calibration alone") in err
    # from the cache, the same note
    assert preflight.check_models({"data": DATA, "baseline": {"model": model}, "qat": qat}, tmp_path) == []
    assert "not those of Sigmoid /1/1.2/Sigmoid" in capsys.readouterr().err
