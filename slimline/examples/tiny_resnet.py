"""A small residual CNN with BatchNorm and a depthwise conv: an example of a model you bring.

    baseline:
      model: python:slimline.examples.tiny_resnet:build
      kwargs: {width: 16, blocks: 2}

Slimline calls build(num_classes=K, in_channels=C, **kwargs) and expects an nn.Module
that maps raw-normalised images (N, C, H, W) to logits (N, K).
"""
from __future__ import annotations

from torch import nn


class Block(nn.Module):
    """Depthwise 3x3, pointwise 1x1, and the input added back (a skip connection)."""

    def __init__(self, width: int):
        super().__init__()
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.pointwise = nn.Conv2d(width, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act = nn.ReLU()

    def forward(self, x):
        out = self.act(self.bn1(self.depthwise(x)))
        return self.act(self.bn2(self.pointwise(out)) + x)


def build(num_classes: int, in_channels: int, width: int = 16, blocks: int = 2) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        *[Block(width) for _ in range(blocks)],
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
