"""MobileViTv2's separable self-attention (issue #16), written by hand and exported in the suite
(timm is not in the core venv): a 1x1 conv, the patch unfold (a reshape that keeps the channels on
axis 1, its channel count folded to a constant by the exporter), qkv = one 1x1 conv split into a
one-channel query, keys and values; softmax(query over the patches) * keys, summed over the
patches: a context vector expanded to the values' shape (Expand of Shape(values)); relu(values) *
context; out_proj; residual; fold back. The stem is resized first (F.interpolate to a fixed
size: a Resize whose sizes copy its input's batch and channel count). Every group but the query's single channel (a size-1
broadcast) and the logits prunes losslessly in onnxruntime."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from onnxcompress.compiler.cost import SearchCost, model_cost
from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.onnx_io import import_graph
from onnxcompress.passes import Plan, apply_plan
from tests.builders import conv_macs, silence_and_prune
from tests.passes.test_modern_blocks import _export, run


class SeparableAttention(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.c = c
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.SiLU())
        self.local = nn.Conv2d(c, c, 1)
        self.qkv = nn.Conv2d(c, 1 + 2 * c, 1)
        self.out = nn.Conv2d(c, c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        y = F.interpolate(self.stem(x), size=(16, 16), mode="bilinear", align_corners=True)  # sizes from Shape(x)[0:2]
        y = self.local(y)
        n, c, h, w = y.shape
        p = y.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, c, 4, -1)  # unfold
        q, k, v = self.qkv(p).split([1, self.c, self.c], dim=1)
        context = (k * F.softmax(q, dim=-1)).sum(dim=-1, keepdim=True)
        p = p + self.out(F.relu(v) * context.expand_as(v))
        y = p.reshape(n, c, 2, 2, h // 2, w // 2).permute(0, 1, 4, 2, 5, 3).reshape(n, c, h, w)  # fold
        x = F.relu(self.proj(y))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_separable_attention_prunes_losslessly(tmp_path):
    # the global RNG is left as it was: later modules build their nets from it (the shuffle stage
    # fixture draws its weights unseeded, and its "silencing changes the output" check depends on them)
    with torch.random.fork_rng():
        m = _export(SeparableAttention(), tmp_path, "separable_attention")
    ops = {n.op_type for n in m.graph.node}
    assert {"Expand", "Split", "Softmax", "ReduceSum", "Resize"} <= ops
    a = analyze(import_graph(m))
    frozen = [g for g in a.groups if not g.prunable]
    query = next(g for g in frozen if g.channels == 1)
    assert "broadcasts this single channel" in query.reason
    assert frozen == [query, a.groups[-1]], [g.reason for g in frozen]  # the query and the logits
    kv = next(g for g in a.groups if any("qkv" in p for p in g.producers) and g.channels == 16)
    stream = next(g for g in a.groups if any("local" in p for p in g.producers))
    assert any("out" in p for p in stream.producers)  # the residual couples local and out_proj
    for g in a.groups[:-1]:
        if not g.prunable:
            continue
        silenced, pruned = silence_and_prune(m, g.id, [0, g.channels - 1])
        assert not np.allclose(run(silenced), run(m))
        np.testing.assert_allclose(run(pruned), run(silenced), rtol=1e-4, atol=1e-5, err_msg=g.id)
        assert model_cost(pruned).macs == conv_macs(pruned) == SearchCost(a).macs({g.id: g.channels - 2})
    silenced, pruned = silence_and_prune(m, kv.id, list(range(8)))
    qkv = next(n for n in pruned.graph.node if n.op_type == "Conv" and "qkv" in n.name)
    assert [i.dims[0] for i in pruned.graph.initializer if i.name == qkv.input[1]] == [1 + 2 * 8]
    half = apply_plan(m, Plan.from_json({"passes": [{"pass": "prune_channels", "ratio": 0.5}]}))
    assert run(half).shape == (len(run(m)), 10)
    assert model_cost(half).macs == conv_macs(half) < 0.4 * model_cost(m).macs


def _count_target(op: str):
    """conv (8 channels) -> `op` whose target (Resize sizes / Expand shape) is
    [x.size(0), 8, 16, 16] or [x.size(0), 8, 8, 8]: the channel count a constant, as an exporter
    folds it; pruning would not follow it, so those channels must freeze."""
    from onnxcompress.compiler.onnx_io import canonicalize
    from tests.builders import GraphBuilder

    g = GraphBuilder(size=8)
    y = g.conv("x", 3, 8, k=1)
    shape = g.node("Shape", [y])
    batch = g.node("Slice", [shape, g.const(np.array([0])), g.const(np.array([1])), g.const(np.array([0]))])
    side = 16 if op == "Resize" else 8
    target = g.node("Concat", [batch, g.const(np.array([8, side, side]))], axis=0)
    if op == "Resize":
        z = g.node("Resize", [y, "", "", target], mode="nearest")
    else:
        z = g.node("Expand", [y, target])
    z = g.conv(z, 8, 4, k=1)
    return canonicalize(g.build(g.head(z, 4)))


def test_a_constant_channel_count_in_resize_sizes_or_expand_shape_freezes():
    for op, reason in (("Resize", "sets the channel count in its sizes"), ("Expand", "sets the channel axis to a count")):
        a = analyze(import_graph(_count_target(op)))
        first = a.groups[0]
        assert first.channels == 8 and not first.prunable and reason in first.reason, (op, first.reason)
        assert a.groups[1].prunable  # the conv after it
