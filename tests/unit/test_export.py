"""ONNX export (slimline.compress.export): validity, torch parity, determinism, the graph
passes, and the check that refuses an export that does not match torch."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from slimline.compress.export import checked_logits, export_onnx, fold_check
from slimline.compress.onnx_files import INPUT, OUTPUT
from slimline.errors import StageError
from slimline.runtime.onnxruntime import predict
from tests.support.onnx_models import SHAPE, make_data, onnx_files, ops, tiny_model


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory) -> dict:
    """The fp32 export, made once for the module."""
    return onnx_files(trained, tmp_path_factory.mktemp("onnx"), kinds=())


def test_export_is_valid_with_a_dynamic_batch_and_matches_torch(trained, files):
    model = onnx.load(files["fp32"])
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == (INPUT, OUTPUT)
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert inp.type.tensor_type.shape.dim[0].dim_param  # symbolic batch, not a fixed 1
    x, _ = make_data(7, seed=3)
    for batch in (x[:1], x):
        assert fold_check(trained, files["fp32"], batch) < 1e-4
    assert "Identity" not in ops(files["fp32"])


def test_export_is_deterministic_and_leaves_the_model_alone(trained, tmp_path):
    model = tiny_model(batch_norm=True, dropout=0.3)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        model(torch.from_numpy(make_data(64, seed=4)[0]))
    a, b = tmp_path / "a" / "m.onnx", tmp_path / "b" / "nested" / "m.onnx"  # parents get created
    export_onnx(model, SHAPE, a)
    export_onnx(model, SHAPE, b)
    assert a.read_bytes() == b.read_bytes()
    assert model.training  # export worked on an eval-mode copy
    # BatchNorm folded into Conv (by the exporter) and Linear (by us), the input
    # normalisation into the first conv (by us); dropout gone.
    assert ops(a) == ["Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Flatten", "Gemm", "Relu", "Gemm"]
    assert fold_check(model, a, make_data(7, seed=5)[0]) < 1e-4
    assert not list(tmp_path.rglob("*.tmp"))


def test_input_normalisation_folds_into_an_unpadded_first_conv_only(tmp_path):
    torch.manual_seed(0)
    x = make_data(7, seed=6)[0]
    for padding, first in ((0, ["Conv"]), (1, ["Sub", "Div", "Conv"])):
        model = tiny_model(padding=padding).eval()  # mean 100, std 60: far from identity
        export_onnx(model, SHAPE, tmp_path / f"p{padding}.onnx")
        # a padded border must see 0 after Sub/Div
        assert ops(tmp_path / f"p{padding}.onnx")[:len(first)] == first
        assert fold_check(model, tmp_path / f"p{padding}.onnx", x) < 1e-4
    graph = onnx.load(tmp_path / "p0.onnx").graph
    assert len(graph.initializer) == len({i for n in graph.node for i in n.input}
                                         & {t.name for t in graph.initializer})


def test_checked_logits_refuses_an_export_that_does_not_match_torch(tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    path = tmp_path / "m.onnx"
    export_onnx(model, SHAPE, path)
    x, _ = make_data(7, seed=6)
    np.testing.assert_array_equal(checked_logits(model, path, x), predict(path, x))
    torch.manual_seed(1)
    other = tiny_model()  # different weights: as if the exporter had dropped a layer's
    with pytest.raises(StageError, match="does not match torch"):
        checked_logits(other, path, x)
