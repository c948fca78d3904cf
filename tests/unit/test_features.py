"""Feature KD: which maps `auto` pairs, explicit pairs' errors, the hint loss, and that the
adapters train and resume with the student but never reach its saved or exported form."""
from __future__ import annotations

import onnx
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from torch import nn

from slimline.compress.export import export_onnx
from slimline.compress.features import (
    FeatureHints,
    auto_pairs,
    check_pairs,
    feature_maps,
    resolve_pairs,
    stage_ends,
    timm_stages,
)
from slimline.compress.kd import make_kd_loss
from slimline.compress.student import student_plan
from slimline.errors import StageError
from slimline.model import ModelSpec, build_model
from slimline.params import DistillParams, Structure, StudentParams, TrainParams
from slimline.training.checkpoint import CheckpointStore
from slimline.training.loop import fit
from slimline.training.trainer import network_spec, train_network
from tests.support.tiny import tiny_prepared

MNIST = ((1, 28, 28), 10, (33.0,), (78.0,))


def cnn(conv=(32, 64), hidden=(128,), shape=MNIST, **kw) -> tuple[ModelSpec, nn.Module]:
    spec = network_spec(Structure(conv_channels=list(conv), hidden=list(hidden), **kw), *shape)
    return spec, build_model(spec)


def pairs_of(pairs):
    return [(p.teacher, p.student, p.teacher_channels, p.student_channels, p.size) for p in pairs]


def test_auto_pairs_the_default_cnn_and_student_by_resolution():
    _, teacher = cnn()
    _, student = cnn((8, 16), (32,))
    # conv 28->26, pool 13, conv 11, pool 5: the two convs end their stages (pre-activation)
    assert pairs_of(auto_pairs(teacher, student, MNIST[0])) == [
        ("0.1", "0.1", 32, 8, (26, 26)), ("0.4", "0.4", 64, 16, (11, 11))]
    _, bn_student = cnn((8, 16), (32,), batch_norm=True)  # the BatchNorm ends the stage instead
    assert [p.student for p in auto_pairs(teacher, bn_student, MNIST[0])] == ["0.2", "0.6"]


def test_auto_pairs_derived_students():
    spec, teacher = cnn()
    s_spec, init = student_plan(StudentParams(derive={"from": "baseline", "width": 0.5}), spec)
    assert init is None
    assert pairs_of(auto_pairs(teacher, build_model(s_spec), MNIST[0])) == [
        ("0.1", "0.1", 32, 16, (26, 26)), ("0.4", "0.4", 64, 32, (11, 11))]
    # a residual model of your own, derived by Torch-Pruning: its last residual block
    t_spec = ModelSpec(structure={}, input_shape=(1, 16, 16), num_classes=3, mean=(0.0,), std=(1.0,),
                       model="python:slimline.examples.tiny_resnet:build", kwargs={"width": 16, "blocks": 2})
    teacher = build_model(t_spec)
    s_spec, init = student_plan(StudentParams(derive={"from": "baseline", "width": 0.5}), t_spec)
    assert pairs_of(auto_pairs(teacher, init(build_model(s_spec)), (1, 16, 16))) == [
        ("1.4", "1.4", 16, 8, (8, 8))]


def test_declared_stage_ends_win_and_shared_modules_are_skipped():
    class Net(nn.Module):  # a timm-style model: feature_info names its stage ends
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1)
            self.feature_info = [{"module": "act", "num_chs": 4, "reduction": 1}]

        def forward(self, x):
            return self.act(self.conv(x)).mean((2, 3))

    net = Net()
    assert timm_stages(net) == {"act"}
    assert [m.name for m in stage_ends(feature_maps(net, (1, 6, 6)), timm_stages(net)).values()] == ["act"]

    class Twice(nn.Module):  # one ReLU used twice has no single output to match
        def __init__(self):
            super().__init__()
            self.conv, self.act = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()

        def forward(self, x):
            return self.act(self.conv(self.act(x))).flatten(1)

    maps = feature_maps(Twice(), (1, 6, 6))
    assert maps["act"].calls == 2 and [m.name for m in stage_ends(maps).values()] == ["conv"]


def test_no_common_resolution_means_logit_kd_only(capsys):
    _, teacher = cnn()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    assert auto_pairs(teacher, mlp, MNIST[0]) == []
    assert resolve_pairs("auto", teacher, mlp, MNIST[0]) == []
    assert "no feature maps of the same size" in capsys.readouterr().out
    assert resolve_pairs("off", teacher, teacher, MNIST[0]) == []


def test_explicit_pairs_are_checked_by_name_and_size():
    _, teacher = cnn()
    _, student = cnn((8, 16), (32,))
    with pytest.raises(StageError, match=r"student module '0\.9' is not a module whose output is a "
                                         r"feature map\. Its stage ends are: 0\.1 8x26x26, 0\.4 16x11x11"):
        check_pairs(teacher, student, MNIST[0], [("0.1", "0.9")])
    with pytest.raises(StageError, match=r"teacher '0\.1' is 26x26 but student '0\.4' is 11x11"):
        check_pairs(teacher, student, MNIST[0], [("0.1", "0.4")])
    got = resolve_pairs([("0.3", "0.3"), ("0.5", "0.5")], teacher, student, MNIST[0])  # post-pool, post-ReLU
    assert pairs_of(got) == [("0.3", "0.3", 32, 8, (13, 13)), ("0.5", "0.5", 64, 16, (11, 11))]


def test_features_param_values():
    assert DistillParams().features == "off" and DistillParams().feature_weight == 3.0
    assert DistillParams(features=[["0.1", "0.1"]]).features == [("0.1", "0.1")]
    assert DistillParams(features=False).features == "off"  # YAML 1.1 reads a bare `off` as false
    for bad in ("on", [], [["0.1"]], [["0.1", ""]], [[1, 2]], {"a": "b"}):
        with pytest.raises(ValidationError, match="expected off, auto or a"):
            DistillParams(features=bad)
    with pytest.raises(ValidationError, match="YAML reads a bare on/yes/true as true; write auto"):
        DistillParams(features=True)
    with pytest.raises(ValidationError, match="feature_weight"):
        DistillParams(feature_weight=0)


def test_hint_loss_trains_student_and_adapters_not_teacher():
    torch.manual_seed(0)
    _, teacher = cnn((8, 8), (16,))
    _, student = cnn((4, 8), (16,))
    pairs = auto_pairs(teacher, student, MNIST[0])
    before = torch.get_rng_state()
    hints = FeatureHints(teacher, pairs, weight=2.0, seed=0).attach(student)
    assert torch.equal(torch.get_rng_state(), before)  # own seeded stream: dropout unaffected
    assert [tuple(a.weight.shape) for a in hints.adapters] == [(8, 4, 1, 1), (8, 8, 1, 1)]
    loss_fn = make_kd_loss(teacher, DistillParams(alpha=0.5), hints)
    x, y = torch.rand(4, 1, 28, 28) * 255, torch.tensor([0, 1, 2, 3])
    with pytest.raises(RuntimeError, match="needs a student and a teacher forward"):
        hints.loss()
    logits = student(x)
    total = loss_fn(logits, x, y)
    logit_only = make_kd_loss(teacher, DistillParams(alpha=0.5))(student(x), x, y)
    assert total.item() > logit_only.item() > 0
    total.backward()
    assert all(p.grad is not None for p in hints.parameters())
    assert student[0][1].weight.grad is not None and all(p.grad is None for p in teacher.parameters())
    hints.detach()
    assert not any(m._forward_hooks for net in (teacher, student) for m in net.modules())
    assert sorted(hints.state_dict()) == ["adapters.0.bias", "adapters.0.weight", "adapters.1.bias",
                                          "adapters.1.weight"]  # the adapters only, never the teacher


TINY_SHAPE = ((1, 12, 12), 3, (127.0,), (70.0,))


def tiny_pair():
    torch.manual_seed(1)
    return build_model(network_spec(Structure(conv_channels=[6], hidden=[8]), *TINY_SHAPE))


def test_resume_with_hints_is_bit_exact(tmp_path):
    """A run killed after its epoch-2 checkpoint, resumed by a fresh process (fresh model and
    adapters, everything from disk), ends bit-identical to an uninterrupted one."""
    teacher = tiny_pair()
    data = tiny_prepared(48)
    train, val = [(torch.from_numpy(x), torch.from_numpy(y).long()) for x, y in
                  (data.splits["train"], data.splits["val"])]
    cfg = TrainParams(epochs=3, batch_size=16, num_threads=1, device="cpu", lr=0.05)
    spec = network_spec(Structure(conv_channels=[3], hidden=[8], dropout=0.2), *TINY_SHAPE)

    def run(folder, stop_after=None):
        torch.manual_seed(0)
        student = build_model(spec)
        pairs = auto_pairs(teacher, student, spec.input_shape)
        hints = FeatureHints(teacher, pairs, 1.0, seed=0).attach(student)

        def kill(metrics):
            if metrics["epoch"] == stop_after:
                raise KeyboardInterrupt  # after the checkpoint of that epoch, as a SIGKILL would be
        try:
            fit(student, train, val, cfg, CheckpointStore(folder),
                make_kd_loss(teacher, DistillParams(), hints), on_epoch=kill, extra=hints)
        finally:
            hints.detach()
        return student.state_dict(), hints.state_dict()

    whole = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_after=2)
    assert "extra" in torch.load(tmp_path / "b/epoch-0002.pt", weights_only=True)
    resumed = run(tmp_path / "b")
    for a, b in zip(whole, resumed, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(whole[1]["adapters.0.weight"], FeatureHints(teacher, auto_pairs(
        teacher, build_model(spec), spec.input_shape), 1.0, seed=0).state_dict()["adapters.0.weight"])


def test_adapters_never_reach_the_saved_or_exported_student(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    teacher = tiny_pair()
    data = tiny_prepared(48)
    spec = network_spec(Structure(conv_channels=[3], hidden=[8]), *TINY_SHAPE)
    hints = FeatureHints(teacher, auto_pairs(teacher, build_model(spec), spec.input_shape), 1.0, seed=0)
    cfg = TrainParams(epochs=1, batch_size=16, num_threads=1, device="cpu")
    done = train_network("kd", spec, cfg, data, tmp_path / "student", key_params={}, deps=[],
                         loss_fn=make_kd_loss(teacher, DistillParams(), hints), hints=hints, log=False)
    assert not (tmp_path / "dvclive").exists()  # log=False
    fresh = build_model(spec)
    assert sorted(load_file(tmp_path / "student/model.safetensors")) == sorted(fresh.state_dict())
    assert not any(m._forward_hooks for net in (teacher, done.model) for m in net.modules())
    names = []
    for name, model in (("trained", done.model), ("fresh", fresh)):
        export_onnx(model, spec.input_shape, tmp_path / f"{name}.onnx")
        graph = onnx.load(tmp_path / f"{name}.onnx").graph
        names.append(([n.op_type for n in graph.node], sorted(i.name for i in graph.initializer)))
    assert names[0] == names[1]


def test_distill_stage_trains_scratch_logit_kd_and_feature_kd(tmp_path, monkeypatch):
    """The stage itself, in process on tiny data: three runs, hints only in the one saved as
    models/student, the logit-KD ablation neither logged nor left on disk, a bad explicit pair
    stopped before any training."""
    import argparse
    import json
    from pathlib import Path

    import yaml

    import tasks.distill as stage
    from slimline.compress import distill as experiment
    from slimline.data.dataset import save_prepared
    from slimline.model import save_model
    from slimline.params import load_params

    monkeypatch.chdir(tmp_path)
    save_prepared(tiny_prepared(48), tmp_path / "data")
    t_spec = network_spec(Structure(conv_channels=[8, 8], hidden=[8]), *TINY_SHAPE)
    save_model(build_model(t_spec), t_spec, tmp_path / "teacher")
    raw = {"train": {"epochs": 1, "batch_size": 16, "num_threads": 1, "device": "cpu"},
           "student": {"conv_channels": [4, 4], "hidden": [8]}, "distill": {"features": "auto"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    args = argparse.Namespace(data=tmp_path / "data", teacher=tmp_path / "teacher",
                              out=tmp_path / "m/student", scratch_out=tmp_path / "m/scratch",
                              params="params.yaml")
    calls = []

    def spy(name, **kw):
        calls.append((name, kw))
        return train_network(name, **kw)

    monkeypatch.setattr(experiment, "train_network", spy)
    root = Path(stage.__file__).parents[1]  # the code deps are relative to the project
    monkeypatch.setattr(stage, "CODE_DEPS", [str(root / p) for p in stage.CODE_DEPS])
    stage.distill(load_params("params.yaml"), args)
    assert [name for name, _ in calls] == ["distill_scratch", "distill_logit_kd", "distill"]
    (_, scratch), (_, logit), (_, kd) = calls
    assert kd["hints"] is not None and "hints" not in logit and "hints" not in scratch
    assert logit["log"] is False and str(args.teacher) in kd["deps"] and str(args.teacher) in logit["deps"]
    assert (kd["key_params"]["distill"]["features"] == "auto"
            and "features" not in logit["key_params"]["distill"])
    report = json.loads((tmp_path / "reports/distill.json").read_text())
    assert report["features"] == [["0.1", "0.1"], ["0.4", "0.4"]] and report["feature_weight"] == 3.0
    assert {"logit_kd_test_accuracy", "feature_gain_val"} <= set(report)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["scratch", "student"]
    assert sorted(p.name for p in (tmp_path / "dvclive").iterdir()) == ["distill", "distill_scratch"]
    assert not (tmp_path / ".slimline/resume").exists() or not any((tmp_path / ".slimline/resume").iterdir())

    calls.clear()
    raw["distill"]["features"] = [["0.1", "0.4"]]  # 10x10 against 3x3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(StageError, match="teacher '0.1' is 10x10 but student '0.4' is 3x3"):
        stage.distill(load_params("params.yaml"), args)
    assert calls == []


def test_stage_ends_skip_a_strided_blocks_first_layers_and_channels_last_maps():
    class Inverted(nn.Module):  # widen at the old size, then stride: the widening is the next stage's
        def __init__(self, c):
            super().__init__()
            self.expand, self.dw = nn.Conv2d(c, 4 * c, 1), nn.Conv2d(4 * c, 4 * c, 3, 2, 1, groups=4 * c)
            self.project = nn.Conv2d(4 * c, c, 1)

        def forward(self, x):
            return self.project(self.dw(self.expand(x)))

    class ChannelsLast(nn.Module):  # a ConvNeXt-style norm on (N, H, W, C)
        def __init__(self, c):
            super().__init__()
            self.norm = nn.LayerNorm(c)

        def forward(self, x):
            return self.norm(x.permute(0, 2, 3, 1))

    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Inverted(4), Inverted(4), ChannelsLast(4),
                        nn.Flatten(), nn.Linear(2 * 2 * 4, 3))
    maps = feature_maps(net, (1, 8, 8))
    assert "3" not in maps and "3.norm" not in maps  # (1, 2, 2, 4) is not read as 2 channels of 2x4
    assert maps["1.expand"].size == (8, 8)
    assert [(m.name, m.size) for m in stage_ends(maps).values()] == \
        [("0", (8, 8)), ("1", (4, 4)), ("2", (2, 2))]
