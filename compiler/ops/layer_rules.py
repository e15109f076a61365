"""Channel rules of the layers: Conv (dense, depthwise, grouped), Gemm, MatMul."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

if TYPE_CHECKING:  # pragma: no cover
    from onnxcompress.compiler.channels import Tracer

from onnxcompress.compiler.ops.layout import ChannelLayout, Segment
from onnxcompress.compiler.ops.table import _register, const, is_depthwise, rank_of


# ----------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------


@_register("Conv", quantizable=True, layer=True)
def _conv(node: gs.Node, ins, tr: "Tracer"):
    x = ins[0]
    w = const(node.inputs[1])
    if w is None:
        tr.freeze_all(ins, f"Conv '{node.name}' has a computed (non-constant) weight")
        return [None]
    group = int(node.attrs.get("group", 1))
    if x is not None and (x.axis != 1 or x.block is not None):
        tr.freeze(x, f"Conv '{node.name}' reads channels on an unexpected axis")
        x = None
    has_bias = len(node.inputs) > 2 and const(node.inputs[2]) is not None
    if group == 1:
        if x is not None:
            tr.slice(node, 1, 1, x, role="in")
        space = tr.new_space(node, w.shape[0])
        out = ChannelLayout(1, (Segment(space, w.shape[0]),))
        tr.slice(node, 1, 0, out, role="out")
        if has_bias:
            tr.slice(node, 2, 0, out, role="param")
        return [out]
    if is_depthwise(node) and x is not None and x.channels == w.shape[0]:
        # depthwise: output channel c is computed from input channel c only, so the output
        # shares the input's channels; the weight's rows and the `group` attribute follow them
        tr.slice(node, 1, 0, x, role="dw")
        if has_bias:
            tr.slice(node, 2, 0, x, role="param")
        tr.set_group_attr(node, x)
        tr.member(x, node)
        return [x]
    return _grouped_conv(node, x, w, group, has_bias, tr)


def _grouped_conv(node: gs.Node, x: ChannelLayout | None, w: np.ndarray, group: int, has_bias: bool, tr: "Tracer"):
    """A grouped convolution (ResNeXt, RegNet: 1 < group, not depthwise) keeps its `group`
    attribute and shrinks every group alike (Torch-Pruning's channels-per-group pruning): input
    channel j of each group is one channel of the analysis (the G copies are coupled), and so is
    output channel j of each group. The weight's input axis holds one group's channels."""
    cin_g, cout = int(w.shape[1]), int(w.shape[0])
    if cout % group:
        tr.freeze(x, f"grouped Conv '{node.name}' with {cout} outputs in {group} groups")
        x = None
    if x is not None and x.channels != group * cin_g:
        tr.freeze(x, f"grouped Conv '{node.name}' reads {x.channels} channels, not {group} x {cin_g}")
        x = None
    if x is not None:
        chunks = _group_chunks(x, group, cin_g, tr)
        for chunk in chunks[1:]:
            if not tr.unify(chunks[0], chunk, node):
                break
        tr.member(x, node)
        tr.slice(node, 1, 1, chunks[0], role="in")
    cout_g = cout // group
    spaces = [tr.new_space(node, cout_g, offset=k * cout_g) for k in range(group)]
    out = ChannelLayout(1, tuple(Segment(s, cout_g) for s in spaces))
    first = ChannelLayout(1, (Segment(spaces[0], cout_g),))
    for s in spaces[1:]:
        tr.unify(first, ChannelLayout(1, (Segment(s, cout_g),)), node)
    tr.slice(node, 1, 0, out, role="out")
    if has_bias:
        tr.slice(node, 2, 0, out, role="param")
    return [out]


def _group_chunks(x: ChannelLayout, groups: int, per_group: int, tr: "Tracer") -> list[ChannelLayout]:
    """`x` cut into `groups` consecutive chunks of `per_group` channels, each chunk segmented at
    the same relative offsets (the union over chunks of where x's segments end inside them)."""
    ends = np.cumsum([s.width for s in x.segments]).tolist()
    inner = {e % per_group for e in ends}
    x = tr.refine(x, {k * per_group + b for k in range(groups) for b in inner if 0 < k * per_group + b < x.channels})
    chunks, current, size = [], [], 0
    for seg in x.segments:
        current.append(seg)
        size += seg.width
        if size == per_group:
            chunks.append(ChannelLayout(x.axis, tuple(current)))
            current, size = [], 0
    return chunks


@_register("Gemm", quantizable=True, layer=True)
def _gemm(node: gs.Node, ins, tr: "Tracer"):
    a = ins[0]
    b = const(node.inputs[1])
    if b is None or b.ndim != 2 or int(node.attrs.get("transA", 0)) != 0:
        tr.freeze_all(ins, f"Gemm '{node.name}' without a constant 2-D weight")
        return [None]
    trans_b = int(node.attrs.get("transB", 0))
    in_axis, out_axis = (1, 0) if trans_b else (0, 1)
    if a is not None:
        if a.axis != 1:
            tr.freeze(a, f"Gemm '{node.name}' reads channels on an unexpected axis")
        else:
            tr.slice(node, 1, in_axis, a, role="in")
    n = b.shape[out_axis]
    space = tr.new_space(node, n)
    out = ChannelLayout(1, (Segment(space, n),))
    tr.slice(node, 1, out_axis, out, role="out")
    if len(node.inputs) > 2:
        c = const(node.inputs[2])
        if c is not None and c.ndim >= 1 and c.shape[-1] == n:
            tr.slice(node, 2, c.ndim - 1, out, role="param")
        elif c is not None and c.size > 1:
            tr.freeze(out, f"Gemm '{node.name}' has a bias of unexpected shape")
    return [out]


@_register("MatMul", quantizable=True, layer=True)
def _matmul(node: gs.Node, ins, tr: "Tracer"):
    a = ins[0]
    b = const(node.inputs[1])
    ra = rank_of(node.inputs[0])
    if b is None or b.ndim != 2 or ra is None:
        tr.freeze_all(ins, f"MatMul '{node.name}' without a constant 2-D weight")
        return [None]
    if a is not None:
        if a.axis != ra - 1:
            tr.freeze(a, f"MatMul '{node.name}' reads channels on an unexpected axis")
        else:
            tr.slice(node, 1, 0, a, role="in")
    n = b.shape[1]
    space = tr.new_space(node, n)
    out = ChannelLayout(ra - 1, (Segment(space, n),))
    tr.slice(node, 1, 1, out, role="out")
    return [out]
