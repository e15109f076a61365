"""Blocks of today's CNNs, as small PyTorch definitions exported in the suite: each is analysed,
pruned and checked in onnxruntime (issue #16). A cut is exact: channels whose producers are all
zero are removed without changing the outputs; a uniform plan shrinks every block kind."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onnxcompress.compiler.cost import SearchCost, model_cost
from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.onnx_io import canonicalize, import_graph
from onnxcompress.compiler.runtime import make_session
from onnxcompress.passes import Plan, apply_plan
from tests.builders import conv_macs, silence_and_prune

X = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)


def _export(net: nn.Module, tmp_path, name: str) -> onnx.ModelProto:
    torch.manual_seed(0)
    net = net.eval()
    for bn in net.modules():
        if isinstance(bn, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if getattr(bn, "running_mean", None) is not None:
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
            if bn.weight is not None:
                bn.weight.data.uniform_(0.5, 1.5)
                bn.bias.data.uniform_(-0.2, 0.2)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 16, 16), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False, opset_version=17)
    return canonicalize(onnx.load(str(path)))


def run(model, x=X):
    s = make_session(model)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


# ------------------------------------------------------------------------------------------------
# block kinds
# ------------------------------------------------------------------------------------------------


class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck: 1x1 -> grouped 3x3 (4 groups) -> 1x1, identity shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(32, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.c(self.b(self.a(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _grouped_conv_group(a):
    """The group of the grouped conv's input channels (channel j of each of its 4 groups)."""
    return a.group(_grouped_conv(a).in_groups[0])


def _grouped_conv(a):
    return next(l for l in a.layers if int(a.graph.node(l.name).attrs.get("group", 1)) == 4)


def test_grouped_conv_shrinks_every_group_alike(tmp_path):
    m = _export(ResNeXtBlock(), tmp_path, "resnext")
    a = analyze(import_graph(m))
    assert [g for g in a.groups if not g.prunable] == [a.groups[-1]]  # only the logits
    g = _grouped_conv_group(a)
    assert g.channels == 4 and g.prunable  # channels per group
    silenced, pruned = silence_and_prune(m, g.id, [1])
    assert not np.allclose(run(silenced), run(m))
    np.testing.assert_allclose(run(pruned), run(silenced), rtol=1e-4, atol=1e-5)
    grouped = next(n for n in pruned.graph.node if n.op_type == "Conv" and any(at.name == "group" and at.i == 4 for at in n.attribute))
    w = next(i for i in pruned.graph.initializer if i.name == grouped.input[1])
    assert list(w.dims[:2]) == [16, 3]  # 4 groups of 3 input channels, the output side untouched
    assert model_cost(pruned).macs == SearchCost(a).macs({g.id: 3}) == conv_macs(pruned)


def test_grouped_conv_output_side_and_uniform_plan(tmp_path):
    m = _export(ResNeXtBlock(), tmp_path, "resnext")
    a = analyze(import_graph(m))
    conv = _grouped_conv(a)
    out_group = next(g for g in a.groups if conv.name in g.producers)
    silenced, pruned = silence_and_prune(m, out_group.id, [0, 2])
    np.testing.assert_allclose(run(pruned), run(silenced), rtol=1e-4, atol=1e-5)
    half = apply_plan(m, Plan.from_json({"passes": [{"pass": "prune_channels", "ratio": 0.5}]}))
    assert run(half).shape == (len(X), 10)
    assert model_cost(half).macs == conv_macs(half) < 0.4 * model_cost(m).macs


class ConvNeXtBlock(nn.Module):
    """ConvNeXt: depthwise 7x7 -> channels-last LayerNorm -> Linear 4x -> GELU -> Linear -> layer
    scale -> residual."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(y))))
        x = x + y.permute(0, 3, 1, 2)
        return self.fc(x.mean((2, 3)))


class GhostSE(nn.Module):
    """GhostNet's ghost module (a primary conv and a cheap depthwise conv of its output,
    concatenated and sliced to the output width) followed by squeeze-excitation."""

    def __init__(self) -> None:
        super().__init__()
        self.primary = nn.Sequential(nn.Conv2d(3, 12, 1), nn.BatchNorm2d(12), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.BatchNorm2d(12), nn.ReLU())
        self.se_reduce, self.se_expand = nn.Conv2d(20, 8, 1), nn.Conv2d(8, 20, 1)
        self.conv = nn.Conv2d(20, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        p = self.primary(x)
        x = torch.cat([p, self.cheap(p)], 1)[:, :20]
        gate = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(F.adaptive_avg_pool2d(x, 1)))))
        x = F.relu(self.conv(x * gate))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SplitTransform(nn.Module):
    """Split-transform-merge (ShuffleNetV2's unit without the shuffle, MobileViT's split): the
    channels are split in two, one half is transformed, the halves are concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1), nn.ReLU())
        self.head = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = F.relu(self.head(torch.cat([a, self.branch(b)], 1)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


BLOCKS = {"convnext": ConvNeXtBlock, "ghost_se": GhostSE, "split_transform": SplitTransform}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_kinds_prune_losslessly_and_shrink(name, tmp_path):
    m = _export(BLOCKS[name](), tmp_path, name)
    a = analyze(import_graph(m))
    frozen = [g for g in a.groups if not g.prunable]
    assert frozen == [a.groups[-1]], [g.reason for g in frozen]  # only the logits
    lossy = {n.name for n in import_graph(m).nodes if n.op == "LayerNormalization"}
    for g in a.groups[:-1]:
        if g.channels < 2:
            continue
        silenced, pruned = silence_and_prune(m, g.id, [g.channels - 1])
        assert run(pruned).shape == (len(X), 10)
        assert model_cost(pruned).macs == conv_macs(pruned) == SearchCost(a).macs({g.id: g.channels - 1})
        if not lossy & set(g.members):  # LayerNorm's statistics change with its channel count
            np.testing.assert_allclose(run(pruned), run(silenced), rtol=1e-4, atol=1e-5, err_msg=f"{name} {g.id}")
    half = apply_plan(m, Plan.from_json({"passes": [{"pass": "prune_channels", "ratio": 0.5}]}))
    assert run(half).shape == (len(X), 10)
    assert model_cost(half).macs == conv_macs(half) < 0.45 * model_cost(m).macs
