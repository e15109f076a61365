"""Channel shuffle (ShuffleNetV2) and GroupNorm, as small PyTorch definitions exported in the
suite (issue #16): the stream's channel groups flow through the Reshape-Transpose-Reshape
permutation and the Reshape-InstanceNorm-Reshape decomposition of nn.GroupNorm, a cut of zeroed
channels is lossless in onnxruntime, and the cost model counts what a run does."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

from onnxcompress.compiler.cost import SearchCost, model_cost
from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.onnx_io import canonicalize, import_graph
from onnxcompress.compiler.ops import shape_rules
from onnxcompress.passes import Plan, apply_plan
from tests.builders import GraphBuilder, conv_macs, silence_and_prune
from tests.compiler.test_shapes import runtime_macs
from tests.passes.test_modern_blocks import X, _export, run

HALF = Plan.from_json({"passes": [{"pass": "prune_channels", "ratio": 0.5}]})


# ------------------------------------------------------------------------------------------------
# ShuffleNetV2: torchvision's InvertedResidual and channel_shuffle, written out
# ------------------------------------------------------------------------------------------------


def channel_shuffle(x, groups: int):
    batchsize, num_channels, height, width = x.size()
    x = x.view(batchsize, groups, num_channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


def _dw(c: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), nn.BatchNorm2d(c))


def _pw(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = oup // 2
        self.branch1 = nn.Sequential(_dw(inp, stride), _pw(inp, half)) if stride > 1 else nn.Sequential()
        self.branch2 = nn.Sequential(_pw(inp if stride > 1 else half, half), _dw(half, stride), _pw(half, half))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleStage(nn.Module):
    """A stem, one ShuffleNetV2 stage (a downsampling unit and `units` basic units) and the
    head. Width 40: after three shuffles the halves of the stream split a branch conv's 20
    channels into ranges of 10, 5 and 2-3 (odd counts: a range boundary inside what would be
    an even interleave)."""

    def __init__(self, width: int = 40, units: int = 3) -> None:
        super().__init__()
        self.stem = _pw(3, 24)
        self.stage = nn.Sequential(InvertedResidual(24, width, 2), *[InvertedResidual(width, width, 1) for _ in range(units)])
        self.conv5 = _pw(width, 64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.conv5(self.stage(self.stem(x))).mean((2, 3)))


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> onnx.ModelProto:
    torch.manual_seed(0)  # the convs' weights are drawn when the module is built: not from the test order
    return _export(ShuffleStage(), tmp_path_factory.mktemp("shuffle"), "shuffle_stage")


def _branch_outputs(a):
    """Groups produced by a branch's last 1x1 conv: the channels the shuffles route."""
    return [g for g in a.groups if any("branch" in p for p in g.producers)]


def test_shuffle_stage_every_branch_conv_is_a_group_of_its_own(stage):
    """The shuffle is a permutation and couples nothing (Torch-Pruning's index mappings): every
    conv's output channels are one group, whole, however many shuffles and splits they pass."""
    a = analyze(import_graph(stage))
    assert [g for g in a.groups if not g.prunable] == [a.groups[-1]]
    assert all(len(g.producers) == 1 for g in a.groups)
    branch = _branch_outputs(a)
    assert branch and all(g.channels in (20, 24) for g in branch), [(g.producers, g.channels) for g in branch]
    # the halves of the shuffled stream hold ranges of the older branches' channels: cells
    assert any(g.cells for g in branch)
    assert all(0 < c < g.channels for g in branch for c in g.cells)
    shuffles = [n for n in a.graph.graph.nodes if n.op == "Transpose"]
    assert len(shuffles) == 4 and all(any(n.name in g.members for g in a.groups) for n in shuffles)


def test_shuffle_stage_zero_then_cut_is_lossless_and_exactly_costed(stage):
    a = analyze(import_graph(stage))
    cost = SearchCost(a)
    reference = run(stage)
    for g in a.groups:
        if not g.prunable:
            continue
        drop = sorted({0, g.channels // 2, g.channels - 1})[: g.channels - 1]
        silenced, pruned = silence_and_prune(stage, g.id, drop)
        assert not np.allclose(run(silenced), reference), g.id
        np.testing.assert_allclose(run(pruned), run(silenced), rtol=1e-4, atol=1e-5, err_msg=g.id)
        assert model_cost(pruned).macs == runtime_macs(pruned, (3, 16, 16)), g.id
        # a cut by count keeps each cell's share: the cost model predicts it exactly
        for keep in (1, g.channels // 3, g.channels - 3):
            by_count = apply_plan(stage, Plan.from_json({"passes": [{"pass": "prune_channels", "group": g.id, "keep": keep}]}))
            assert model_cost(by_count).macs == runtime_macs(by_count, (3, 16, 16)) == cost.macs({g.id: keep}), (g.id, keep)


def test_shuffle_stage_uniform_half_shrinks_well_below_half(stage, monkeypatch):
    half = apply_plan(stage, HALF)
    assert run(half).shape == (len(X), 10)
    teacher = runtime_macs(stage, (3, 16, 16))
    got = model_cost(half).macs
    assert got == runtime_macs(half, (3, 16, 16))
    assert got < 0.30 * teacher  # measured 0.277x (0.303x when the shuffle coupled its chunks)
    # the pruned shuffles are Gathers with the kept permutation
    ops = [n.op_type for n in half.graph.node]
    assert "Transpose" not in ops and ops.count("Gather") == 4
    # before the shuffle was modelled, the stream froze at the reshapes: 0.447x
    monkeypatch.setattr(shape_rules, "regroup", lambda node, x, tr: False)
    before = apply_plan(stage, HALF)
    assert runtime_macs(before, (3, 16, 16)) > 0.42 * teacher


def test_the_shufflenet_of_the_shape_tests_prunes_every_group_losslessly(tmp_path):
    """tests/torch_models.ShuffleNet: shuffles written as reshape(n, -1, h, w), no BN."""
    from tests.torch_models import ShuffleNet, export

    m = canonicalize(onnx.load(str(export(ShuffleNet(), tmp_path / "shufflenet.onnx", (3, 16, 16)))))
    a = analyze(import_graph(m))
    assert [g for g in a.groups if not g.prunable] == [a.groups[-1]]
    for g in a.groups[:-1]:
        silenced, pruned = silence_and_prune(m, g.id, [g.channels - 1])
        np.testing.assert_allclose(run(pruned), run(silenced), rtol=1e-4, atol=1e-5, err_msg=g.id)
    assert model_cost(apply_plan(m, HALF)).macs < 0.35 * model_cost(m).macs


# ------------------------------------------------------------------------------------------------
# GroupNorm: whole groups are cut (lossless); the exporter's Reshape-InstanceNorm-Reshape form
# and the GroupNormalization op of opset 21
# ------------------------------------------------------------------------------------------------


class GroupNormBlock(nn.Module):
    """conv-GN-ReLU, then a residual conv-GN, 4 groups of 4 channels, and a 1x1 conv after."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.gn0 = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.conv, self.gn1 = nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.head = nn.Sequential(nn.Conv2d(16, 24, 1), nn.GroupNorm(8, 24), nn.ReLU())
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = F.relu(self.gn0(self.stem(x)))
        x = F.relu(x + self.gn1(self.conv(x)))
        return self.fc(self.head(x).mean((2, 3)))


@pytest.mark.parametrize("opset", [17, 18])
def test_groupnorm_prunes_whole_groups_losslessly(opset, tmp_path):
    torch.manual_seed(0)
    net = GroupNormBlock()
    path = tmp_path / f"gn{opset}.onnx"
    _export(net, tmp_path, "warm")  # seeds the affine parameters as the other blocks
    torch.onnx.export(net.eval(), torch.zeros(1, 3, 16, 16), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False, opset_version=opset)
    m = canonicalize(onnx.load(str(path)))
    ops = {n.op_type for n in m.graph.node}
    assert "InstanceNormalization" in ops and "GroupNormalization" not in ops  # what torch emits at 17 and 18
    a = analyze(import_graph(m))
    assert [g for g in a.groups if not g.prunable] == [a.groups[-1]]
    assert sorted(g.channels for g in a.groups[:-1]) == [4, 8]  # GN groups: the residual stream's 4, the head's 8
    for g in a.groups[:-1]:
        silenced, pruned = silence_and_prune(m, g.id, [1])
        assert not np.allclose(run(silenced), run(m))
        np.testing.assert_allclose(run(pruned), run(silenced), rtol=1e-4, atol=1e-5, err_msg=g.id)
        assert model_cost(pruned).macs == conv_macs(pruned) == SearchCost(a).macs({g.id: g.channels - 1})
        widths = [i.dims[0] for i in pruned.graph.initializer if len(i.dims) == 4 and i.dims[1] != 1]
        assert (12 if g.channels == 4 else 21) in widths  # one group of 4 (3) channels gone
    half = apply_plan(m, HALF)
    assert run(half).shape == (len(X), 10)
    assert model_cost(half).macs == conv_macs(half) < 0.3 * model_cost(m).macs


def _gn21(concat_widths: tuple[int, ...] = (16,), groups: int = 4) -> onnx.ModelProto:
    g = GraphBuilder(opset=21)
    parts = [g.conv("x", 3, w) for w in concat_widths]
    x = g.concat(parts) if len(parts) > 1 else parts[0]
    c = sum(concat_widths)
    scale = g.const((g.rng.random(c) + 0.5).astype(np.float32))
    bias = g.const((g.rng.standard_normal(c) * 0.1).astype(np.float32))
    x = g.relu(g.node("GroupNormalization", [x, scale, bias], num_groups=groups, epsilon=1e-5))
    out = g.head(g.relu(g.conv(x, c, 8)), 8)
    graph = helper.make_graph(g.nodes, "gn21", [g.input], [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 10])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return canonicalize(onnx.shape_inference.infer_shapes(model))


def test_groupnormalization_op_cuts_whole_groups_and_num_groups():
    m = _gn21()
    x = X[:, :, :8, :8]
    a = analyze(import_graph(m))
    g = a.groups[0]
    assert g.prunable and g.channels == 4
    silenced, pruned = silence_and_prune(m, g.id, [2])
    np.testing.assert_allclose(run(pruned, x), run(silenced, x), rtol=1e-4, atol=1e-5)
    node = next(n for n in pruned.graph.node if n.op_type == "GroupNormalization")
    assert helper.get_attribute_value(next(at for at in node.attribute if at.name == "num_groups")) == 3
    assert model_cost(pruned).macs == conv_macs(pruned) == SearchCost(a).macs({g.id: 3})


def test_groupnorm_forms_it_cannot_cut_freeze_with_a_reason():
    # groups of 4 channels over a concat of 6 + 10: the second group mixes two producers
    a = analyze(import_graph(_gn21((6, 10))))
    assert [g.channels for g in a.groups[:2]] == [6, 10]
    assert all(not g.prunable and "do not line up" in g.reason for g in a.groups[:2])



class OneGroupNormBlock(nn.Module):
    """conv, GroupNorm(1, C) (timm's MobileViT transformer norm: over all channels and space), a
    residual conv, GAP, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.norm = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(1, 16)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + self.conv(self.norm(x))
        return self.fc(x.mean((2, 3)))


def _assert_lossy_prune_is_valid_and_costed(m: onnx.ModelProto, x: np.ndarray) -> None:
    a = analyze(import_graph(m))
    assert [g for g in a.groups if not g.prunable] == [a.groups[-1]], [g.reason for g in a.groups]
    g = a.groups[0]
    silenced, pruned = silence_and_prune(m, g.id, [2, 5])
    onnx.checker.check_model(pruned)
    out = run(pruned, x)
    assert out.shape == (len(x), 10) and np.isfinite(out).all()
    # lossy by nature (the statistics are taken over the remaining channels), but only slightly here
    assert not np.allclose(out, run(silenced, x), rtol=1e-4, atol=1e-5)
    assert model_cost(pruned).macs == conv_macs(pruned) == SearchCost(a).macs({g.id: g.channels - 2})


def test_groupnorm_with_one_group_is_pruned_lossily_like_layernorm(tmp_path):
    torch.manual_seed(0)
    m = _export(OneGroupNormBlock(), tmp_path, "gn1")
    assert "InstanceNormalization" in {n.op_type for n in m.graph.node}
    _assert_lossy_prune_is_valid_and_costed(m, X)
    half = apply_plan(m, HALF)
    assert run(half).shape == (len(X), 10)
    assert model_cost(half).macs == conv_macs(half) < 0.3 * model_cost(m).macs
    # the GroupNormalization op (opset 21) with num_groups=1: scale and bias cut with the channels
    _assert_lossy_prune_is_valid_and_costed(_gn21(groups=1), X[:, :, :8, :8])


# ------------------------------------------------------------------------------------------------
# the same two models from the torch.export-based exporter (fixtures: tests/data/make_dynamo_exports.py)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["shufflenet", "groupnorm"])
def test_dynamo_exports_prune_the_same(name):
    from pathlib import Path

    from onnxcompress.compiler.bridge import OnnxModule

    m = canonicalize(onnx.load(str(Path(__file__).resolve().parents[1] / "data" / f"dynamo_{name}.onnx")))
    a = analyze(import_graph(m))
    assert all(g.prunable for g in a.groups[:-1])
    for g in a.groups[:-1]:
        if g.prunable:
            silenced, pruned = silence_and_prune(m, g.id, [g.channels - 1])
            np.testing.assert_allclose(run(pruned), run(silenced), rtol=1e-4, atol=1e-5, err_msg=g.id)
    half = apply_plan(m, HALF)
    assert model_cost(half).macs == runtime_macs(half, (3, 16, 16)) < 0.32 * runtime_macs(m, (3, 16, 16))
    with torch.no_grad():  # the fine-tuning bridge runs the pruned student as onnxruntime does
        got = OnnxModule(half).eval()(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(got, run(half), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compress_a_shuffle_stage_end_to_end(stage, tmp_path):
    """`compress` on the shuffle stage (DDPG over groups with cells, refit, one fine-tuning epoch
    through the bridge's Gather): a valid student at the MACs target, whose reported MACs are what
    onnxruntime's shapes count."""
    from onnxcompress import compress

    onnx.save(stage, tmp_path / "t.onnx")
    x = np.random.default_rng(0).integers(0, 255, (240, 16, 16, 3), dtype=np.uint8)
    y = run(stage, ((x.astype(np.float32) / 255).transpose(0, 3, 1, 2))).argmax(1)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    result = compress(tmp_path / "t.onnx", tmp_path / "train.npz", "macs=0.4", episodes=4, finetune_epochs=1, families=1,
                      channel_multiple=1, progress=False)
    student = result.students[0]
    assert student.feasible and student.metrics.macs <= 0.4 * result.teacher.macs
    m = student.model
    assert student.metrics.macs == model_cost(m).macs == runtime_macs(m, (3, 16, 16))
    assert run(m, X).shape == (len(X), 10)
