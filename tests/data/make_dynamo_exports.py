"""Regenerates the `dynamo_*.onnx` fixtures: small CNNs with random weights exported by PyTorch's
torch.export-based ONNX exporter (the default since PyTorch 2.9), whose graphs differ from the
TorchScript exporter's: opset 18+, `Reshape(x, [-1, C], allowzero=1)` flattens, `ReduceMean`
with axes as an input, BN already folded. The tests read the committed files, so they need
neither onnxscript (which this exporter requires) nor this script.

    pip install onnxscript && python tests/data/make_dynamo_exports.py [NAME ...]   # torch 2.13, onnxscript 0.7.2

The ShuffleNetV2 stage and the GroupNorm block are the ones of tests/passes/test_shuffle_groupnorm.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))


def cbr(i: int, o: int, s: int = 1, g: int = 1, act=nn.ReLU6) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, groups=g, bias=False), nn.BatchNorm2d(o), act())


class InvertedResidual(nn.Module):
    """MobileNetV2 block (optionally with EfficientNet's squeeze-and-excitation)."""

    def __init__(self, c: int, e: int = 2, act=nn.ReLU6, se: bool = False):
        super().__init__()
        h = c * e
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), act())
        self.dw = cbr(h, h, g=h, act=act)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(h, h // 4, 1), nn.SiLU(), nn.Conv2d(h // 4, h, 1), nn.Sigmoid()) if se else None
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        h = self.dw(self.expand(x))
        if self.se is not None:
            h = h * self.se(h)
        return x + self.project(h)


class MobileNetish(nn.Module):
    def __init__(self, act=nn.ReLU6, se: bool = False):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8, act=act), InvertedResidual(8, act=act, se=se), cbr(8, 16, 2, act=act), InvertedResidual(16, act=act, se=se))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, 10))

    def forward(self, x):
        return self.head(self.features(x))


class DenseNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0, self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(12, 4, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.c0(x))
        x = torch.cat([x, F.relu(self.c1(x))], 1)
        x = torch.cat([x, F.relu(self.c2(x))], 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class VGGish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(self.features(x).reshape(x.shape[0], -1))


NETS = {
    "mobilenetv2": lambda: MobileNetish(),
    "mobilenetv3": lambda: MobileNetish(nn.Hardswish),
    "efficientnet": lambda: MobileNetish(nn.SiLU, se=True),
    "densenet": DenseNetish,
    "vgg": VGGish,
    "shufflenet": lambda: __import__("tests.passes.test_shuffle_groupnorm", fromlist=["ShuffleStage"]).ShuffleStage(),
    "groupnorm": lambda: __import__("tests.passes.test_shuffle_groupnorm", fromlist=["GroupNormBlock"]).GroupNormBlock(),
}


def main() -> None:
    for name, make in NETS.items():
        if sys.argv[1:] and name not in sys.argv[1:]:
            continue
        torch.manual_seed(0)
        net = make().eval()
        for m in net.modules():  # non-trivial BN statistics, as after training
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, nn.GroupNorm):
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
        path = HERE / f"dynamo_{name}.onnx"
        torch.onnx.export(net, (torch.zeros(2, 3, 16, 16),), str(path), input_names=["x"], output_names=["y"], dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("N")},), external_data=False)
        print(path.name, path.stat().st_size)


if __name__ == "__main__":
    main()
