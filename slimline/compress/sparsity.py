"""How many of a model's weights are non-zero: what unstructured pruning leaves, counted
for the prune stage's report and evaluate's table. Its own module, so that evaluate does
not load Torch-Pruning (and timm and torchvision with it) to count zeros."""
from __future__ import annotations

import torch
from torch import nn


def sparsity(model: nn.Module) -> tuple[int, int]:
    """(nonzero params, total params). Mid-pruning, a masked `weight_orig` is counted
    as the effective `weight` (orig * mask), since that is what the network uses."""
    nonzero = total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            base = name.removesuffix("_orig")
            if name.endswith("_orig") and hasattr(module, base + "_mask"):
                p = getattr(module, base)
            nonzero += int(torch.count_nonzero(p))
            total += p.numel()
    return nonzero, total
