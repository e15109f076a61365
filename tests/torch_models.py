"""Small PyTorch models exported to ONNX for tests of exporter patterns that onnx.helper graphs
do not reproduce (shapes computed at run time, non-classifier heads)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's basic unit: split, a 1x1-dw3x3-1x1 branch on one half, concat, shuffle."""

    def __init__(self, c: int) -> None:
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(nn.Conv2d(h, h, 1), nn.ReLU(), nn.Conv2d(h, h, 3, padding=1, groups=h), nn.Conv2d(h, h, 1), nn.ReLU())

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = x.shape
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, -1, h, w)


class ShuffleNet(nn.Module):
    """Two shuffle units between a stem and a strided conv, then a linear classifier (10 classes)."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.units = nn.Sequential(ShuffleUnit(c), ShuffleUnit(c))
        self.down = nn.Conv2d(c, 2 * c, 3, padding=1, stride=2)
        self.fc = nn.Linear(2 * c, 10)

    def forward(self, x):
        x = self.units(torch.relu(self.stem(x)))
        return self.fc(torch.relu(self.down(x)).mean((2, 3)))


class Segmenter(nn.Module):
    """A tiny segmentation net: per-pixel scores of `classes` classes, output [N, classes, H, W]."""

    def __init__(self, classes: int = 21) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x):
        return self.head(self.body(x))


class Detector(nn.Module):
    """A detector-like head: 84 values (4 box + 80 class scores) per anchor, output [N, 84, A]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(32, 84, 1)

    def forward(self, x):
        y = self.head(self.body(x))
        return y.flatten(2)


def export(module: nn.Module, path: Path, sample_shape: tuple[int, ...], seed: int = 0) -> Path:
    """TorchScript export (opset 17) with a dynamic batch axis, seeded weights."""
    torch.manual_seed(seed)
    for p in module.parameters():  # re-draw: the module may have been built before seeding
        nn.init.normal_(p, std=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), torch.zeros(1, *sample_shape), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return path
