"""The option-A shortcut of the CIFAR ResNets (He et al.; akamaster's ResNet-20/32/56): where the
channels double, the residual stream is subsampled by a Slice on H and W and zero-padded on the
channel axis by a Pad, and the head flattens with x.view(x.size(0), -1) (Shape/Gather/Concat into
a computed Reshape target). The whole residual stream must be prunable through them (only the
logits stay frozen), and a cut must be exact: channels whose producers are all zero are removed
without changing the outputs (checked in onnxruntime)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onnxcompress.compiler.cost import SearchCost, model_cost
from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.onnx_io import canonicalize, import_graph, load_model
from onnxcompress.compiler.runtime import make_session
from onnxcompress.passes import Plan, apply_plan
from tests.builders import conv_macs, silence_and_prune
from tests.conftest import realdata_path


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if stride != 1 or cin != cout else None

    def forward(self, x):
        out = F.relu(self.b1(self.c1(x)))
        out = self.b2(self.c2(out))
        short = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)
        return F.relu(out + short)


class OptionANet(nn.Module):
    """A 3-stage CIFAR ResNet with akamaster's option-A shortcut, one block per stage."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(_Block(width, width, 1), _Block(width, 2 * width, 2), _Block(2 * width, 4 * width, 2))
        self.fc = nn.Linear(4 * width, 10)

    def forward(self, x):
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        out = F.avg_pool2d(out, out.size()[3])
        return self.fc(out.view(out.size(0), -1))


X = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def option_a(tmp_path_factory) -> onnx.ModelProto:
    torch.manual_seed(0)
    net = OptionANet().eval()
    for bn in net.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)
    path = tmp_path_factory.mktemp("option_a") / "option_a.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 16, 16), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False, opset_version=17)
    model = onnx.load(str(path))
    assert {"Pad", "Slice", "Shape"} <= {n.op_type for n in model.graph.node}
    return canonicalize(model)


def run(model, x=X):
    s = make_session(model)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _stream_groups(a) -> list:
    """Groups that cross a Pad: the residual stream's parts."""
    pads = {f.node for f in a.pad_fixes}
    return [g for g in a.groups if g.prunable and pads & set(g.members)]


def test_residual_stream_is_prunable_and_only_logits_frozen(option_a):
    a = analyze(import_graph(option_a))
    frozen = [g for g in a.groups if not g.prunable]
    assert len(frozen) == 1 and "logits" in frozen[0].reason
    # stage 1's stream (8 channels) is channels 4..11 of stage 2's stream and 12..19 of stage 3's;
    # the zero channels each Pad adds are groups of their own, coupled to the convs' channels there
    stream = _stream_groups(a)
    assert len(stream) == 5  # stage-1 stream, 2 zero parts of stage 2, 2 of stage 3
    assert sorted(g.channels for g in stream) == [4, 4, 8, 8, 8]
    assert len(a.pad_fixes) == 2 and not any(f.before is None or f.after is None for f in a.pad_fixes)


@pytest.mark.parametrize("which", range(5))
def test_cut_through_pad_and_slice_is_lossless(option_a, which):
    a = analyze(import_graph(option_a))
    g = _stream_groups(a)[which]
    drop = [0, g.channels - 1] if g.channels > 4 else [1]
    silenced, pruned = silence_and_prune(option_a, g.id, drop)
    assert not np.allclose(run(silenced), run(option_a))  # the silenced channels did matter
    np.testing.assert_allclose(run(pruned), run(silenced), rtol=1e-4, atol=1e-5)
    assert model_cost(pruned).macs == SearchCost(a).macs({g.id: g.channels - len(drop)}) == conv_macs(pruned)


def test_uniform_prune_shrinks_the_stream_and_costs_are_exact(option_a):
    out = apply_plan(option_a, Plan.from_json({"passes": [{"pass": "prune_channels", "ratio": 0.5}]}))
    assert run(out).shape == (len(X), 10)
    assert model_cost(out).macs == conv_macs(out)
    assert model_cost(out).macs < 0.3 * model_cost(option_a).macs  # every conv's both sides shrink
    pads = [n for n in out.graph.node if n.op_type == "Pad"]
    widths = [onnx.numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == p.input[1]))[1] for p in pads]
    assert widths == [2, 4]  # half of the 4 and 8 zero channels


def test_zero_channel_groups_may_be_cut_to_none(option_a):
    """The zero channels a Pad adds (and the conv channels added to them) never make up a tensor
    alone: a plan may cut such a group to 0 channels (ChannelGroup.min_keep 0). A group that is
    a whole tensor (the stem's, the inner convs') keeps at least one."""
    from onnxcompress.compiler.errors import PlanError

    a = analyze(import_graph(option_a))
    stream = _stream_groups(a)
    zero = [g for g in stream if g.channels == 4]
    assert len(zero) == 2 and all(g.min_keep == 0 and g.prunable for g in zero)
    inner = [g for g in a.groups if g.prunable and g not in stream]
    assert inner and all(g.min_keep == 1 for g in inner)
    for g in zero + [next(g for g in stream if g.channels == 8 and g.min_keep == 0)]:
        out = apply_plan(option_a, Plan.from_json({"passes": [{"pass": "prune_channels", "group": g.id, "keep": 0}]}))
        assert run(out).shape == (len(X), 10)
        assert model_cost(out).macs == conv_macs(out) == SearchCost(a).macs({g.id: 0}) < model_cost(option_a).macs
    with pytest.raises(PlanError, match="must keep at least 1 channel"):
        apply_plan(option_a, Plan.from_json({"passes": [{"pass": "prune_channels", "groups": {inner[0].id: 0}}]}))


def test_remove_block_with_option_a_shortcut(option_a):
    a = analyze(import_graph(option_a))
    units = [u for u in a.removable if u.kind == "residual_block"]
    assert len(units) == 3  # the projection-free blocks of every stage, option-A ones included
    out = apply_plan(option_a, Plan.from_json({"passes": [{"pass": "remove", "block": units[1].id}]}))
    assert run(out).shape == (len(X), 10)


@pytest.mark.realdata
def test_real_resnet20_stream_prunable_and_lossless():
    model = canonicalize(load_model(realdata_path("models", "cifar10_resnet20_akamaster.onnx")))
    a = analyze(import_graph(model))
    assert [g.id for g in a.groups if not g.prunable] == [a.groups[-1].id]  # the logits only
    x = np.load(realdata_path("models", "cifar10_resnet20_akamaster.ref_io.npz"))["input"]
    stream = max(_stream_groups(a), key=lambda g: len(g.members))
    silenced, pruned = silence_and_prune(model, stream.id, [0, 5, 9])
    s1, s2 = make_session(silenced), make_session(pruned)
    np.testing.assert_allclose(s2.run(None, {"input": x})[0], s1.run(None, {"input": x})[0], rtol=1e-4, atol=1e-4)
    half = apply_plan(model, Plan.from_json({"passes": [{"pass": "prune_channels", "ratio": 0.5}]}))
    assert model_cost(half).macs == conv_macs(half)
    assert model_cost(half).macs < 0.3 * model_cost(model).macs
