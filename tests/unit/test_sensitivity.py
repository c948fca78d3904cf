"""Accuracy-aware static int8: the most sensitive node is kept in fp32 first, and a
variant that still misses its budget is written as its best attempt, with the shortfall."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from slimline.compress.export import export_onnx
from slimline.compress.quantization import node_ops, quantize_static_int8, static_int8_nodes
from slimline.compress.sensitivity import accuracy, static_int8_within_budget
from slimline.runtime.onnxruntime import predict

SHAPE = (1, 12, 12)


def sensitive(layer: torch.nn.Module, dead: int) -> None:
    """Give every output of `layer` one huge weight on input `dead`, which is always zero in
    fp32 (so the network computes the same), while per-channel int8 now has one scale for
    that huge weight and the small ones: they round to zero."""
    with torch.no_grad():
        if isinstance(layer, torch.nn.Conv2d):
            layer.weight[:, dead, 0, 0] = 1e3
        else:
            layer.weight[:, dead] = 1e3


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """(fp32 ONNX path, calibration, val x, val y) of a seeded CNN whose second conv (and,
    with both=True, its first linear layer) is made sensitive; labels are the fp32 model's
    own predictions, so fp32 scores 100%."""
    from slimline.model import ModelSpec, build_model
    from slimline.params import Structure

    def make(both: bool):
        torch.manual_seed(0)
        spec = ModelSpec(structure=Structure(conv_channels=[4, 8], hidden=[16], pool=1).model_dump(),
                         input_shape=SHAPE, num_classes=4, mean=(0.0,), std=(1.0,))
        model = build_model(spec).eval()
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():  # conv1's channel 0 and conv2's channel 0 are dead: ReLU makes them 0
            for conv in convs:
                conv.weight[0] = 0.0
                conv.bias[0] = -1.0
        sensitive(convs[1], dead=0)
        if both:  # the flattened features of conv2's dead channel 0 come first
            sensitive(linears[0], dead=0)
        rng = np.random.default_rng(0)
        x = rng.normal(0, 3, (96, *SHAPE)).astype(np.float32)
        with torch.no_grad():  # centre the logits: predictions spread over the classes
            linears[-1].bias -= model(torch.from_numpy(x)).mean(0)
        folder = tmp_path_factory.mktemp("sens")
        export_onnx(model, SHAPE, folder / "fp32.onnx")
        y = predict(folder / "fp32.onnx", x).argmax(1)
        return folder / "fp32.onnx", x[:32], x[32:], y[32:]
    return make


def test_the_sensitive_node_stays_fp32_first_and_the_variant_then_fits(project, tmp_path):
    fp32, calib, x, y = project(both=False)
    assert accuracy(fp32, x, y) == 1.0
    quantize_static_int8(fp32, tmp_path / "plain.onnx", calib, 16)
    assert accuracy(tmp_path / "plain.onnx", x, y) < 0.9  # plain int8 breaks it

    got = static_int8_within_budget(fp32, tmp_path / "q.onnx", calib, 16, x, y, max_drop=0.02, max_excluded=3)
    assert got.ok and got.shortfall == ""
    conv2 = [n for n, op in node_ops(fp32) if op == "Conv"][1]
    assert got.fp32_nodes == [conv2]  # the second conv, and nothing else
    assert got.sensitivity[0]["node"] == conv2 and got.sensitivity[0]["op"] == "Conv"
    assert got.val_drop <= 0.02 and accuracy(tmp_path / "q.onnx", x, y) >= 0.98
    assert conv2 not in static_int8_nodes(tmp_path / "q.onnx")  # it really runs in fp32
    drops = [r["val_drop"] for r in got.sensitivity]
    assert drops == sorted(drops) and drops[-1] > 0.1  # every other node alone leaves it broken


def test_max_excluded_reached_writes_the_best_attempt_and_says_why(project, tmp_path):
    fp32, calib, x, y = project(both=True)
    ref = accuracy(fp32, x, y)
    quantize_static_int8(fp32, tmp_path / "plain.onnx", calib, 16)
    plain = ref - accuracy(tmp_path / "plain.onnx", x, y)
    got = static_int8_within_budget(fp32, tmp_path / "q.onnx", calib, 16, x, y, max_drop=0.02, max_excluded=1)
    assert not got.ok and got.sensitivity  # the scan is reported for the reader
    assert "max_excluded 1" in got.shortfall and "pt below its fp32 source on val" in got.shortfall
    # the file written is the best attempt: plain int8 or one node kept, whichever loses least
    top = got.sensitivity[0]
    assert got.val_drop == min(plain, top["val_drop"]) > 0.02
    assert got.fp32_nodes == ([] if plain <= top["val_drop"] else [top["node"]])
    assert ref - accuracy(tmp_path / "q.onnx", x, y) == got.val_drop  # measured on the file as written
    assert not set(got.fp32_nodes) & set(static_int8_nodes(tmp_path / "q.onnx"))
    got = static_int8_within_budget(fp32, tmp_path / "q.onnx", calib, 16, x, y, max_drop=0.02, max_excluded=0)
    # no scan: nothing may move
    assert not got.ok and got.sensitivity == [] and "max_excluded 0" in got.shortfall
    assert got.fp32_nodes == [] and \
        (tmp_path / "q.onnx").read_bytes() == (tmp_path / "plain.onnx").read_bytes()


def test_a_variant_within_budget_is_left_alone(project, tmp_path):
    fp32, calib, x, y = project(both=False)
    got = static_int8_within_budget(fp32, tmp_path / "q.onnx", calib, 16, x, y, max_drop=1.0, max_excluded=3)
    assert got.ok and got.fp32_nodes == [] and got.sensitivity == []  # no scan when none is needed
    # Asked to scan for the report, it ranks the nodes but still keeps every one in int8.
    got = static_int8_within_budget(fp32, tmp_path / "q.onnx", calib, 16, x, y, max_drop=1.0, max_excluded=3,
                                    scan=True)
    conv2 = [n for n, op in node_ops(fp32) if op == "Conv"][1]
    assert got.ok and got.fp32_nodes == [] and static_int8_nodes(tmp_path / "q.onnx")[1] == conv2
    top = got.sensitivity[0]
    assert top["node"] == conv2 and top["recovered"] == pytest.approx(got.val_drop - top["val_drop"])
    assert top["recovered"] > 0.1  # keeping conv2 in fp32 gives back most of what int8 lost
