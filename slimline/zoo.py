"""Models the user brings, by factory spec:

    torchvision:<name>           torchvision.models.get_model(name, weights=None, ...)
    timm:<name>                  timm.create_model(name, pretrained=False, ...)
    python:<module>:<callable>   the user's own code: fn(num_classes=K, in_channels=C, **kwargs)

Nothing is downloaded: zoo models start from random weights (a checkpoint can be
imported with slimline.weights). The built-in CNN (`cnn`) is slimline.model's.
"""
from __future__ import annotations

import importlib

from torch import nn

from slimline.errors import StageError
from slimline.params import parse_model_spec


def create(spec: str, num_classes: int, in_channels: int, kwargs: dict | None = None) -> nn.Module:
    """Build a zoo or user model with `num_classes` outputs for `in_channels` input channels."""
    kind, name = parse_model_spec(spec)
    kwargs = dict(kwargs or {})
    try:
        if kind == "torchvision":
            import torchvision

            net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
            if in_channels != 3:
                _replace_first_conv(net, in_channels, spec)
        elif kind == "timm":
            import timm

            net = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels,
                                    **kwargs)
        elif kind == "python":
            module, attr = name.split(":")
            fn = getattr(importlib.import_module(module), attr)
            net = fn(num_classes=num_classes, in_channels=in_channels, **kwargs)
        else:
            raise ValueError("the built-in cnn is built by slimline.model.build_model")
    except (ImportError, AttributeError, TypeError, ValueError, KeyError, RuntimeError) as err:
        raise StageError(f"model {spec!r} could not be built ({type(err).__name__}: {err}); check the "
                         f"name and its kwargs") from None
    if not isinstance(net, nn.Module):
        raise StageError(f"model {spec!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def _replace_first_conv(net: nn.Module, in_channels: int, spec: str) -> None:
    """torchvision models take RGB. For C != 3 channels the first conv is replaced by one
    with C inputs, freshly initialised (its 3-channel weights would not apply anyway)."""
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            new = nn.Conv2d(in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                            m.dilation, m.groups if m.groups == 1 else in_channels,
                            bias=m.bias is not None, padding_mode=m.padding_mode)
            net.set_submodule(name, new)
            return
    raise StageError(f"model {spec!r} has no Conv2d to take {in_channels}-channel input")


def fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """(H, W) of the default build of a timm model that takes that input size only (a vision
    transformer's patch grid, LeViT's attention biases), as timm's own config says; None for
    a model that takes any size. timm builds such a model for another size with the
    `img_size` kwarg."""
    for m in model.modules():
        cfg = getattr(m, "pretrained_cfg", None)
        if isinstance(cfg, dict) and cfg.get("fixed_input_size") and cfg.get("input_size"):
            return tuple(cfg["input_size"][-2:])
    return None
