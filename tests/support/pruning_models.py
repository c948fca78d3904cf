"""Tiny built-in CNNs and a recording fine-tune, for the pruning tests."""
from __future__ import annotations

import torch

from slimline.model import ModelSpec, build_model
from slimline.params import Structure

SHAPE = (1, 12, 12)
CLASSES = 3


def make(seed=0, **structure):
    """(model, spec, structure) of a small cnn: two 8-channel convs, two 16-unit layers."""
    s = Structure(**{"conv_channels": [8, 8], "padding": 1, "hidden": [16, 16], **structure})
    spec = ModelSpec(structure=s.model_dump(), input_shape=SHAPE, num_classes=CLASSES,
                     mean=(0.5,), std=(0.25,))
    torch.manual_seed(seed)
    return build_model(spec), spec, s


class Recorder:
    """A finetune that trains nothing but remembers how it was called."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, epochs):
        self.calls.append(epochs)
