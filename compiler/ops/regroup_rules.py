"""Reshape patterns that regroup the channel axis: the channel shuffle (ShuffleNet) and the
GroupNorm decomposition (PyTorch's nn.GroupNorm exported at opsets 17 and 18), and the
GroupNormalization op itself.

Both are several ops whose middle tensors split the channel axis over two axes. The pattern's
first Reshape checks the whole chain (each op the only reader of the one before), records the
layout its last op outputs (`Tracer.deferred`), and the ops in between carry no layout; an
unrecognised form returns None and the Reshape rule freezes its channels as before.

Channel shuffle, g groups of C/g: x.view(N, g, C/g, H, W).transpose(1, 2).reshape(N, C, H, W):
output channel j*g + k is input channel k*(C/g) + j, a permutation of the channel axis and
nothing else: no channels are coupled by it. Its output layout is the input's permuted
(`Tracer.permute`): the channels of several spaces interleaved one at a time, as *partial*
segments (a run of one space's channels; the spaces are not split). A Split of the shuffled stream
(ShuffleNetV2's next unit) then takes partial segments too, and every branch conv's outputs stay
one channel group of their own however many shuffles they pass, as Torch-Pruning's index mappings
do. After a cut the three ops become one Gather on the channel axis with the kept permutation
(`PermuteFix`): a pruned shuffle is in general no interleave of equal chunks.

GroupNorm with G groups: channels are cut by whole groups. A group whose channels are all zero
normalises to zero, and the other groups' statistics do not change, so cutting it is lossless
(unlike LayerNorm's, or a channels-per-group cut of GroupNorm, which would change every group's
mean and variance). Every C/G consecutive channels become one channel of the analysis
(`Tracer.coarsen`), the per-group scale and bias are cut with them, the per-channel affine that
follows is cut as usual, and the group count in the target becomes the kept count. With one
group (GroupNorm(1, C): over all channels and space) no cut is lossless: channels pass through
and are cut lossily, as channels-only LayerNorm is (`_one_group`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

if TYPE_CHECKING:  # pragma: no cover
    from onnxcompress.compiler.channels import Tracer

from onnxcompress.compiler.ops.layout import ChannelLayout
from onnxcompress.compiler.ops.table import _register, const, shape_of


def _only_reader(t: gs.Tensor, op: str) -> gs.Node | None:
    """The single op of type `op` that reads `t`, if `t` has no other reader and is not a graph
    output (the exporter's graph outputs have no readers but are checked by the caller)."""
    readers = list(t.outputs)
    return readers[0] if len(readers) == 1 and readers[0].op == op and readers[0].inputs[0] is t else None


def _ints(shape: tuple | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _fixable(node: gs.Node) -> bool:
    """A Reshape whose target a cut may replace by a constant with 0 for "copy the batch"."""
    return int(node.attrs.get("allowzero", 0)) == 0 and len(node.inputs) > 1


def regroup(node: gs.Node, x: ChannelLayout, tr: "Tracer") -> bool:
    """Recognises a channel shuffle or GroupNorm starting at Reshape `node` (input layout `x`);
    True when it is handled (then the Reshape's own output carries no layout)."""
    if x.block is not None or x.axis != 1 or not _fixable(node):
        return False
    in_shape, out_shape = shape_of(node.inputs[0]), shape_of(node.outputs[0])
    if in_shape is None or out_shape is None or len(in_shape) < 3 or not _ints(in_shape[1:]):
        return False
    if len(out_shape) == len(in_shape) + 1:
        return _shuffle(node, x, in_shape, out_shape, tr)
    if len(out_shape) == 3:
        return _group_norm(node, x, in_shape, out_shape, tr)
    return False


def _shuffle(node: gs.Node, x: ChannelLayout, in_shape: tuple, out_shape: tuple, tr: "Tracer") -> bool:
    c, rest = in_shape[1], tuple(in_shape[2:])
    if not _ints(out_shape[1:]) or tuple(out_shape[3:]) != rest:
        return False
    g, per = out_shape[1], out_shape[2]
    transpose = _only_reader(node.outputs[0], "Transpose")
    if g * per != c or transpose is None or list(transpose.attrs.get("perm", [])) != [0, 2, 1] + list(range(3, len(out_shape))):
        return False
    back = _only_reader(transpose.outputs[0], "Reshape")
    if back is None or shape_of(back.outputs[0]) is None or tuple(shape_of(back.outputs[0])[1:]) != tuple(in_shape[1:]):
        return False
    perm = [k * per + j for j in range(per) for k in range(g)]  # output position j*g + k <- input k*per + j
    out = tr.permute(x, perm)
    for n in (node, transpose, back):
        tr.member(x, n)
    tr.fix_permute((node, transpose, back), x, out, perm)
    tr.deferred[back.outputs[0].name] = out
    return True


def _group_norm(node: gs.Node, x: ChannelLayout, in_shape: tuple, out_shape: tuple, tr: "Tracer") -> bool:
    c, groups = in_shape[1], out_shape[1]
    norm = _only_reader(node.outputs[0], "InstanceNormalization")
    if not isinstance(groups, int) or c % groups or norm is None:
        return False
    params = [const(t) for t in norm.inputs[1:3]]
    back = _only_reader(norm.outputs[0], "Reshape")
    if any(p is None or p.shape != (groups,) for p in params) or back is None or len(params) != 2:
        return False
    back_shape = shape_of(back.outputs[0])
    if back_shape is None or tuple(back_shape[1:]) != tuple(in_shape[1:]):
        return False
    name = f"GroupNorm at '{node.name}'"
    for n in (node, norm, back):
        tr.member(x, n)
    if groups == 1:
        return _one_group(node, back, x, in_shape, name, tr)
    coarse = tr.coarsen(x, c // groups)
    if coarse is None:
        tr.freeze(x, f"{name}: its groups of {c // groups} channels do not line up with channels pruned together")
        coarse = tr.resolve(x)
        tr.deferred[back.outputs[0].name] = coarse
        return True
    per_group = coarse.scaled(c // groups).with_axis(0)
    for i in (1, 2):
        tr.slice(norm, i, 0, per_group, role="param")
    tr.fix_target(node, (0, per_group, -1), coarse)
    return _reshape_back(back, x, coarse, in_shape, name, tr)


def _reshape_back(back: gs.Node, x: ChannelLayout, out: ChannelLayout, in_shape: tuple, name: str, tr: "Tracer") -> bool:
    """The GroupNorm's Reshape back to the input's shape gives layout `out`. Its target (Shape(x)
    in exports, computed after this rule runs, or a constant) becomes a constant with the kept
    channel count inferred."""
    if not _ints(in_shape[2:]) or not _fixable(back):
        tr.freeze(x, f"{name} reshapes back to a shape it cannot rewrite (unknown spatial size)")
    else:
        tr.fix_target(back, (0, -1) + tuple(in_shape[2:]), out)
    tr.deferred[back.outputs[0].name] = out
    return True


def _one_group(node: gs.Node, back: gs.Node, x: ChannelLayout, in_shape: tuple, name: str,
               tr: "Tracer") -> bool:
    """GroupNorm(1, C) (timm's MobileViT transformer norm) normalises over all channels and space:
    channels pass through and the per-channel affine after it is cut with them. Lossy, like the
    channels-only LayerNorm rule and Torch-Pruning's GroupNorm pruning: the statistics are then
    taken over the remaining channels. The single group's scale and bias stay."""
    x = tr.resolve(x)
    tr.fix_target(node, (0, 1, -1), x)
    return _reshape_back(back, x, x, in_shape, name, tr)


@_register("GroupNormalization")
def _group_normalization(node: gs.Node, ins, tr: "Tracer"):
    """The GroupNormalization op of opset 21 (scale and bias per channel): whole groups are cut,
    as for the decomposed form; `num_groups` becomes the kept count. Opset 18's form (scale and
    bias per group, deprecated by onnx for its ambiguity) is frozen."""
    x = ins[0]
    if x is None:
        return [None]
    groups = int(node.attrs.get("num_groups", 0))
    shape = shape_of(node.inputs[0])
    params = [const(t) for t in node.inputs[1:3]]
    name = f"GroupNormalization '{node.name}'"
    if x.axis != 1 or x.block is not None or shape is None or not isinstance(shape[1], int) or groups < 1 or shape[1] % groups:
        tr.freeze(x, f"{name} of unexpected shape")
        return [x]
    if any(p is None or p.ndim != 1 or p.shape[0] != shape[1] for p in params) or len(params) != 2:
        tr.freeze(x, f"{name} has computed scale and bias, or one per group (opset 18)")
        return [x]
    if groups == 1:  # lossy, as for the decomposed form (_one_group): scale and bias cut with the channels
        for i in (1, 2):
            tr.slice(node, i, 0, x.with_axis(0), role="param")
        tr.member(x, node)
        return [x]
    coarse = tr.coarsen(x, shape[1] // groups)
    if coarse is None:
        tr.freeze(x, f"{name}: its groups of {shape[1] // groups} channels do not line up with channels pruned together")
        return [x]
    per_group = coarse.scaled(shape[1] // groups).with_axis(0)
    for i in (1, 2):
        tr.slice(node, i, 0, coarse.with_axis(0), role="param")
    tr.set_group_attr(node, per_group, attr="num_groups")
    tr.member(coarse, node)
    return [coarse]


__all__ = ["regroup"]
