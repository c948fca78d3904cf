"""Models the user brings (torchvision:, timm:, python:), imported weights, and every
compression step on them: build -> derive -> prune -> export -> reload, equal logits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from slimline.compress import pruning
from slimline.compress.export import checked_logits, export_onnx
from slimline.errors import StageError
from slimline.model import ModelSpec, build_model, load_model, save_model
from slimline.params import PruneParams
from slimline.weights import load_weights, read_state_dict

SHAPE = (1, 32, 32)
TINY = "python:slimline.examples.tiny_resnet:build"


def spec(model: str, **kwargs) -> ModelSpec:
    return ModelSpec(structure={}, input_shape=SHAPE, num_classes=10, mean=(0.5,), std=(0.25,),
                     model=model, kwargs=kwargs)


def plain(num_classes: int, in_channels: int) -> nn.Module:
    """A model without any skip connection (python:test_zoo:plain)."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))


def assert_reloads(model: nn.Module, s: ModelSpec, tmp_path, name="m") -> nn.Module:
    """save_model -> load_model rebuilds the same module: the same logits, bit for bit."""
    model = model.eval()
    save_model(model, pruning.saved_spec(model, s), tmp_path / name)
    loaded, _ = load_model(tmp_path / name)
    x = torch.rand(3, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    return loaded


def job(**cfg) -> pruning.PruneJob:
    return pruning.PruneJob(PruneParams(**{"amount": 0.5, "steps": 1, "finetune_epochs": 0,
                                           "ablation_epochs": 0, "layers_to_remove": 1, **cfg}),
                            example=torch.rand(2, *SHAPE), finetune=lambda m, e: None,
                            evaluate=lambda m: 0.5)


@pytest.mark.parametrize("model", ["torchvision:resnet18", "timm:resnet10t", TINY])
def test_build_derive_prune_export_reload(model, tmp_path):
    s = spec(model)
    torch.manual_seed(0)
    base = build_model(s)
    assert base(torch.rand(2, *SHAPE)).shape == (2, 10)  # 1 channel in, 10 classes out
    n_base = sum(p.numel() for p in base.parameters())

    torch.manual_seed(0)
    student = pruning.derive(build_model(s), torch.zeros(2, *SHAPE), 0.5)
    assert sum(p.numel() for p in student.parameters()) < 0.5 * n_base  # about width^2
    assert pruning.classifier(student).out_features == 10  # the classifier is kept whole
    assert_reloads(student, s, tmp_path, "student")

    for method in ("structured", "layer") if model != "timm:resnet10t" else ("structured",):
        torch.manual_seed(0)
        out = pruning.PRUNERS[method](build_model(s).eval(), s, job())
        assert sum(p.numel() for p in out.model.parameters()) < n_base
        loaded = assert_reloads(out.model, out.spec, tmp_path, method)
        path = tmp_path / f"{method}.onnx"
        export_onnx(loaded, SHAPE, path)
        checked_logits(loaded, path, np.random.default_rng(0).random((4, *SHAPE), dtype=np.float32))


def test_block_removal_finds_residual_blocks_and_says_when_there_are_none(tmp_path):
    torch.manual_seed(0)
    model = build_model(spec(TINY, blocks=2))
    assert pruning.residual_blocks(model, torch.rand(2, *SHAPE)) == ["1.3", "1.4"]
    out = pruning.PRUNERS["layer"](model.eval(), spec(TINY, blocks=2), job())
    assert [r["removed"] for r in out.ablation] == ["1.3", "1.4"]
    assert sum(r["chosen"] for r in out.ablation) == 1
    with pytest.raises(pruning.NotApplicable, match="no residual block"):
        pruning.PRUNERS["layer"](build_model(spec("python:test_zoo:plain")).eval(),
                                 spec("python:test_zoo:plain"), job())


def test_torchvision_models_get_a_first_conv_for_the_datas_channels():
    net = build_model(spec("torchvision:resnet18"))[1]
    assert net.conv1.in_channels == 1 and net.fc.out_features == 10


def test_a_model_that_cannot_be_built_names_the_spec():
    with pytest.raises(StageError, match="torchvision:resnet_nope"):
        build_model(spec("torchvision:resnet_nope"))
    with pytest.raises(StageError, match="unexpected keyword|got an unexpected"):
        build_model(spec(TINY, depth=3))


# --- imported weights ---------------------------------------------------------------

def test_weights_import_accepts_safetensors_and_wrapped_state_dicts(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = build_model(spec(TINY))[1]
    state = src.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        torch.manual_seed(2)
        dst = build_model(spec(TINY))[1]
        load_weights(dst, tmp_path / name)
        for k, v in dst.state_dict().items():
            assert torch.equal(v, state[k]), (name, k)


def test_weights_that_need_pickle_are_refused_without_unpickling(tmp_path):
    torch.save(build_model(spec(TINY)), tmp_path / "whole_model.pt")  # a pickled module, not a state dict
    with pytest.raises(StageError, match="needs pickle code.*never unpickles.*state_dict"):
        read_state_dict(tmp_path / "whole_model.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(StageError, match="not a readable safetensors"):
        read_state_dict(tmp_path / "junk.safetensors")


def test_mismatched_weights_are_listed_by_name(tmp_path):
    torch.save(build_model(spec(TINY, width=8))[1].state_dict(), tmp_path / "w.pt")
    with pytest.raises(StageError,
                       match=r"wrong shape: 0.weight \(8, 1, 3, 3\) vs the model's \(16, 1, 3, 3\)"):
        load_weights(build_model(spec(TINY, width=16))[1], tmp_path / "w.pt")
    torch.save(build_model(spec(TINY, blocks=1))[1].state_dict(), tmp_path / "w1.pt")
    with pytest.raises(StageError, match=r"missing: 4\.depthwise\.weight"):
        load_weights(build_model(spec(TINY, blocks=2))[1], tmp_path / "w1.pt")
