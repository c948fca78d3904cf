"""slimline check's model preflight: build, forward, ONNX export and Torch-Pruning graph of
the models params.yaml asks for, before any stage trains; cached by what it depends on."""
from __future__ import annotations

import torch
from torch import nn

from slimline import preflight


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
    monkeypatch.setattr(preflight, "_run", lambda *a: ["ran again"])
    assert preflight.check_models(good, tmp_path) == []  # cached: a no-op check pays nothing
    good["baseline"]["kwargs"] = {"width": 8}
    assert preflight.check_models(good, tmp_path) == ["ran again"]  # a changed spec is checked anew
