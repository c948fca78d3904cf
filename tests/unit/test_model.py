"""Network builder: any input shape, computed flatten size, logits left raw."""
import pytest
import torch
from torch import nn

from slimline.model import (
    ModelSpec,
    ShapeError,
    build_model,
    count_flops,
    count_params,
    load_model,
    save_model,
)
from slimline.params import Structure


def spec(shape=(1, 28, 28), classes=10, **structure):
    c = shape[0]
    return ModelSpec(structure=Structure(**structure).model_dump(), input_shape=shape,
                     num_classes=classes, mean=(0.5,) * c, std=(0.25,) * c)


@pytest.mark.parametrize("shape, structure", [
    ((1, 28, 28), {}),  # the seed network: 64*5*5 flatten, not the seed's 64*6*6
    ((3, 32, 32), {}),
    ((1, 8, 8), {"conv_channels": [8], "padding": 1}),
    ((3, 32, 32), {"conv_channels": [16, 32, 64], "padding": 1, "hidden": [64, 32], "batch_norm": True}),
    ((1, 28, 28), {"conv_channels": [], "hidden": [32]}),  # an MLP is a legal structure
])
def test_builder_output_shapes(shape, structure):
    model = build_model(spec(shape, 7, **structure)).eval()
    out = model(torch.rand(5, *shape))
    assert out.shape == (5, 7)


def test_seed_network_size_and_flops():
    model = build_model(spec())
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linear[0].in_features == 64 * 5 * 5
    assert count_params(model) == 225_034
    assert count_flops(model, (1, 28, 28)) == 5_262_080


@pytest.mark.parametrize("act, cls", [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU), ("elu", nn.ELU),
                                      ("gelu", nn.GELU), ("silu", nn.SiLU)])
def test_every_activation_builds_and_never_touches_logits(act, cls):
    model = build_model(spec(hidden=[32, 16], activation=act, negative_slope=0.2, alpha=0.5))
    acts = [m for m in model.modules() if isinstance(m, cls)]
    assert len(acts) == 2 + 2  # two conv blocks + two hidden layers
    assert isinstance(list(model.modules())[-1], nn.Linear)  # logits come straight from a Linear
    if act == "leaky_relu":
        assert acts[0].negative_slope == 0.2
    if act == "elu":
        assert acts[0].alpha == 0.5
    # raw logits can be negative: no activation squashes them
    out = model.eval()(torch.rand(64, 1, 28, 28) * 255)
    assert out.shape == (64, 10)


def test_layer_count_follows_hidden_list():
    for hidden in ([], [64], [64, 32, 16]):
        model = build_model(spec(hidden=hidden))
        assert sum(isinstance(m, nn.Linear) for m in model.modules()) == len(hidden) + 1


@pytest.mark.parametrize("shape, structure, needle", [
    ((1, 8, 8), {}, "pool after conv block 2"),
    ((1, 4, 4), {"kernel_size": 5, "pool": 1}, "conv block 1"),
])
def test_too_small_input_says_what_to_change(shape, structure, needle):
    with pytest.raises(ShapeError) as exc:
        build_model(spec(shape, **structure))
    assert needle in str(exc.value)
    assert "Use fewer conv_channels" in str(exc.value)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    s = spec((3, 16, 16), 5, conv_channels=[4], hidden=[8], batch_norm=True)
    model = build_model(s).eval()
    save_model(model, s, tmp_path / "m")
    loaded, s2 = load_model(tmp_path / "m")
    x = torch.rand(3, 3, 16, 16)
    assert s2 == s
    assert torch.equal(model(x), loaded(x))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "structure.json"]
