"""Channel rules of the shape domain and of the ops that reshape or move the channel axis."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

if TYPE_CHECKING:  # pragma: no cover
    from onnxcompress.compiler.channels import Tracer

from onnxcompress.compiler.ops.layout import ChannelLayout, DimRef
from onnxcompress.compiler.ops.channel_rules import _slice_params
from onnxcompress.compiler.ops.regroup_rules import regroup
from onnxcompress.compiler.ops.table import _register, const, norm_axis, rank_of, shape_of


# ----------------------------------------------------------------------------------------------
# the shape domain: small integer tensors computed from Shape (x.view(x.size(0), -1) and the like)
# ----------------------------------------------------------------------------------------------
# A Shape op reads a tensor's dimensions; Gather/Unsqueeze/Squeeze/Cast/Identity/Concat/Slice of
# such values are evaluated symbolically (tracer.shape_values: ints and DimRefs). A channel count
# read this way stays correct after pruning as long as it is only copied into a Reshape target at
# its own position; any other use (arithmetic, an op outside this domain) freezes those channels.

def _entries(t: gs.Tensor, tr: "Tracer") -> tuple | None:
    """The symbolic entries of a shape-domain tensor, or of a small integer constant."""
    if t.name in tr.shape_values:
        return tr.shape_values[t.name]
    c = const(t)
    if c is not None and c.dtype.kind in "iu" and c.ndim <= 1:
        return tuple(int(v) for v in np.asarray(c).reshape(-1))
    return None


def shape_value_rule(node: gs.Node, tr: "Tracer") -> bool:
    """Evaluates `node` in the shape domain when its data input is a shape value; True if done."""
    data = node.inputs[0] if node.inputs else None
    if data is None or data.name not in tr.shape_values or node.op == "Reshape":
        return False
    vals = tr.shape_values[data.name]
    out: tuple | None = None
    if node.op in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
        out = vals
    elif node.op == "Gather" and int(node.attrs.get("axis", 0)) == 0:
        idx = const(node.inputs[1])
        if idx is not None:
            out = tuple(vals[int(i)] for i in np.asarray(idx).reshape(-1))
    elif node.op == "Concat" and int(node.attrs.get("axis", 0)) in (0, -1):
        parts = [_entries(t, tr) for t in node.inputs]
        if all(p is not None for p in parts):
            out = tuple(e for p in parts for e in p)
    elif node.op == "Slice":
        params = _slice_params(node, 1)
        if params is not None and len(params) == 1 and params[0][0] == 0:
            _, start, end, step = params[0]
            out = tuple(vals[slice(start, end if end < 2**62 else None, step)])
    if out is None:
        return False
    tr.shape_values[node.outputs[0].name] = out
    return True


@_register("Shape")
def _shape(node: gs.Node, ins, tr: "Tracer"):
    x = ins[0]
    r = rank_of(node.inputs[0])
    if r is None:
        tr.freeze(x, f"Shape '{node.name}' of a tensor of unknown rank")
        return [None]
    start = norm_axis(int(node.attrs.get("start", 0)), r)
    end = norm_axis(int(node.attrs["end"]), r) if "end" in node.attrs else r
    name = node.inputs[0].name
    if x is not None:
        tr.channel_of[name] = x
    tr.shape_values[node.outputs[0].name] = tuple(
        DimRef(name, i, x is not None and x.block is None and i == x.axis) for i in range(start, min(end, r))
    )
    return [None]


@_register("Gather")
def _gather(node: gs.Node, ins, tr: "Tracer"):
    # (shape values are handled before the rule runs); on a feature map, Gather picks entries
    # along an axis, which we do not map: its channels are frozen
    tr.freeze_all(ins, f"Gather '{node.name}' indexes a feature map")
    return [None] * len(node.outputs)



def _flatten_layout(x: ChannelLayout, in_shape: tuple, start: int, node: gs.Node, tr: "Tracer",
                    fix_target: bool = True) -> ChannelLayout | None:
    """Layout after flattening dims [start:] of a tensor into one axis (`start`). A Reshape's
    constant target is rewritten after a cut (`fix_target`); a computed one adapts by itself."""
    block = in_shape[start:]
    if x.block is not None or any(not isinstance(d, int) for d in block):
        tr.freeze(x, f"{node.op} '{node.name}' flattens a block of unknown or nested shape")
        return None
    if x.axis < start:
        tr.freeze(x, f"{node.op} '{node.name}' folds the channel axis into the batch")
        return None
    tr.member(x, node)
    if node.op == "Reshape" and fix_target:
        tr.fix_reshape(node, keep_prefix=start, flatten_rest=True)
    return ChannelLayout(start, x.segments, tuple(int(d) for d in block), x.axis - start)


@_register("Flatten")
def _flatten(node: gs.Node, ins, tr: "Tracer"):
    x = ins[0]
    shape = shape_of(node.inputs[0])
    if x is None:
        return [None]
    if shape is None:
        tr.freeze(x, f"Flatten '{node.name}' of unknown shape")
        return [None]
    start = norm_axis(int(node.attrs.get("axis", 1)), len(shape))
    if start == 0:
        tr.freeze(x, f"Flatten '{node.name}' with axis 0")
        return [None]
    return [_flatten_layout(x, shape, start, node, tr)]


@_register("Reshape")
def _reshape(node: gs.Node, ins, tr: "Tracer"):
    done = tr.deferred.pop(node.outputs[0].name, None)
    if done is not None:  # the last op of a channel shuffle or GroupNorm (regroup_rules.py)
        return [tr.resolve(done)]
    x = ins[0]
    if x is not None and regroup(node, x, tr):
        return [None]
    if x is None:
        if len(node.inputs) > 1:  # a target that reads a channel count, on an untracked tensor
            tr.freeze_channel_reads(node.inputs[1].name, f"Reshape '{node.name}' uses a channel count in its target")
        return [None]
    target = const(node.inputs[1])
    in_shape = shape_of(node.inputs[0])
    out_shape = shape_of(node.outputs[0])
    computed = None if target is not None else tr.shape_values.get(node.inputs[1].name)
    if (target is None and computed is None) or in_shape is None or out_shape is None:
        tr.freeze(x, f"Reshape '{node.name}' with a computed target shape")
        return [None]
    if computed is not None:
        return [_reshape_computed(node, x, computed, in_shape, out_shape, tr)]
    # flatten-like: (N, d1, ..., dk) -> (N, d1*...*dk)
    if len(out_shape) == 2 and len(in_shape) >= 2 and all(isinstance(d, int) for d in in_shape[1:]):
        if isinstance(out_shape[1], int) and out_shape[1] == int(np.prod(in_shape[1:])):
            if len(in_shape) == 2:
                tr.member(x, node)
                return [x]
            return [_flatten_layout(x, in_shape, 1, node, tr)]
    # a reshape that keeps every axis up to and including the channel axis: after pruning its
    # target copies those dims (0) instead of hard-coding them
    if x.block is None and len(out_shape) > x.axis and tuple(in_shape[: x.axis + 1]) == tuple(out_shape[: x.axis + 1]):
        tr.member(x, node)
        tr.fix_reshape(node, keep_prefix=x.axis + 1)
        return [x]
    tr.freeze(x, f"Reshape '{node.name}' hard-codes the channel count")
    return [None]


def _reshape_computed(node: gs.Node, x: ChannelLayout, target: tuple, in_shape: tuple, out_shape: tuple, tr: "Tracer"):
    """A Reshape whose target is computed at run time (symbolic entries, see the shape domain):
    it adapts to a pruned input by itself when it copies the batch and infers the rest
    (flatten: [x.size(0), -1]) or copies every dimension up to the channel axis."""
    name = node.inputs[0].name

    def copies(e, axis: int) -> bool:
        return isinstance(e, DimRef) and e.axis == axis and (e.tensor == name or axis == 0)

    if x.block is None and len(target) == 2 and copies(target[0], 0) and target[1] == -1 and x.axis >= 1:
        if len(in_shape) == 2:
            tr.member(x, node)
            return x
        return _flatten_layout(x, in_shape, 1, node, tr, fix_target=False)
    rest_reads_channels = any(isinstance(e, DimRef) and e.channels for e in target[x.axis + 1 :])
    if x.block is None and len(target) > x.axis and all(copies(target[i], i) for i in range(x.axis + 1)) and not rest_reads_channels:
        tr.member(x, node)
        return x
    # the exporter folded the channel count itself to a constant (MobileViTv2's patch unfold:
    # [x.size(0), 64, 14, 2, 14, 2], the channels kept on axis 1 and the dims after them regrouped):
    # after a cut the target becomes a constant, 0 copying the dims before the channel axis
    if (x.block is None and len(target) > x.axis and all(copies(target[i], i) for i in range(x.axis))
            and target[x.axis] == x.width() and all(isinstance(e, int) for e in target[x.axis + 1 :])
            and int(node.attrs.get("allowzero", 0)) == 0):
        tr.member(x, node)
        tr.fix_target(node, (0,) * x.axis + (x,) + tuple(target[x.axis + 1 :]), x)
        return x
    tr.freeze(x, f"Reshape '{node.name}' with a computed target shape")
    tr.freeze_channel_reads(node.inputs[1].name, f"Reshape '{node.name}' uses a channel count in its target")
    return None


def _axes(node: gs.Node) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1:
        a = const(node.inputs[1])
        return None if a is None else [int(v) for v in np.asarray(a).reshape(-1)]
    return []


@_register("Squeeze", "Unsqueeze")
def _squeeze(node: gs.Node, ins, tr: "Tracer"):
    x = ins[0]
    if x is None:
        return [None]
    axes = _axes(node)
    r_in, r_out = rank_of(node.inputs[0]), rank_of(node.outputs[0])
    if axes is None or r_in is None or r_out is None or x.block is not None:
        tr.freeze(x, f"{node.op} '{node.name}' with unknown axes")
        return [None]
    if node.op == "Squeeze":
        axes = [norm_axis(a, r_in) for a in axes] or [i for i, d in enumerate(shape_of(node.inputs[0]) or ()) if d == 1]
        if x.axis in axes:
            tr.freeze(x, f"Squeeze '{node.name}' removes the channel axis")
            return [None]
        new_axis = x.axis - sum(1 for a in axes if a < x.axis)
    else:
        axes = sorted(norm_axis(a, r_out) for a in axes)
        new_axis = x.axis
        for a in axes:
            if a <= new_axis:
                new_axis += 1
    tr.member(x, node)
    return [x.with_axis(new_axis)]


@_register("Transpose")
def _transpose(node: gs.Node, ins, tr: "Tracer"):
    x = ins[0]
    if x is None:
        return [None]
    r = rank_of(node.inputs[0])
    perm = node.attrs.get("perm")
    if x.block is not None or r is None:
        tr.freeze(x, f"Transpose '{node.name}' of a flattened block")
        return [None]
    perm = list(perm) if perm is not None else list(range(r))[::-1]
    tr.member(x, node)
    return [x.with_axis(perm.index(x.axis))]


REDUCE_OPS = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1", "ReduceProd", "ReduceLogSumExp", "ReduceSumSquare")


@_register(*REDUCE_OPS)
def _reduce(node: gs.Node, ins, tr: "Tracer"):
    x = ins[0]
    if x is None:
        return [None]
    r = rank_of(node.inputs[0])
    axes = _axes(node)
    if r is None or axes is None or x.block is not None:
        tr.freeze(x, f"{node.op} '{node.name}' with unknown axes")
        return [None]
    axes = [norm_axis(a, r) for a in axes] or list(range(r))
    if x.axis in axes:
        tr.freeze(x, f"{node.op} '{node.name}' reduces across channels")
        return [None]
    keepdims = int(node.attrs.get("keepdims", 1))
    tr.member(x, node)
    new_axis = x.axis if keepdims else x.axis - sum(1 for a in axes if a < x.axis)
    return [x.with_axis(new_axis)]


@_register("Expand")
def _expand(node: gs.Node, ins, tr: "Tracer"):
    """Expand broadcasts its input to a target shape (MobileViTv2's context vector expanded to the
    values' shape: `context.expand_as(value)`, a target read by Shape at run time). Channels pass
    through when the target's entry at the channel axis is 1, or reads the channel count of a
    tensor that carries channels (the two are unified, so they shrink together and the run-time
    target follows the cut); a single channel broadcast to such a count takes that tensor's
    channels and is frozen itself. A constant channel count or any other use freezes."""
    x = ins[0]
    shape_in = node.inputs[1] if len(node.inputs) > 1 else None
    target = _entries(shape_in, tr) if shape_in is not None else None
    r_in, r_out = rank_of(node.inputs[0]), rank_of(node.outputs[0])

    def frozen(reason: str):
        tr.freeze(x, reason)
        if shape_in is not None:
            tr.freeze_channel_reads(shape_in.name, reason)
        return [None]

    if x is None:
        if shape_in is not None and tr.channel_refs(shape_in.name):
            return frozen(f"Expand '{node.name}' broadcasts an untracked tensor to a channel count")
        return [None]
    if target is None or r_in is None or r_out is None or x.block is not None or len(target) != r_out:
        return frozen(f"Expand '{node.name}' with an unknown target shape")
    axis = x.axis + r_out - r_in
    entry = target[axis]
    if any(isinstance(e, DimRef) and e.channels for i, e in enumerate(target) if i != axis):
        return frozen(f"Expand '{node.name}' uses a channel count off the channel axis")
    if entry == 1:
        tr.member(x, node)
        return [x.with_axis(axis)]
    source = tr.resolve(tr.channel_of.get(entry.tensor)) if isinstance(entry, DimRef) and entry.channels else None
    if source is None or source.block is not None or source.axis != entry.axis:
        return frozen(f"Expand '{node.name}' sets the channel axis to a count that pruning would not follow")
    source = source.with_axis(axis)
    tr.member(x, node)
    if x.width() == 1 and source.width() > 1:
        tr.freeze(x, f"Expand '{node.name}' broadcasts this single channel across other channels")
        return [source]
    if not tr.unify(x.with_axis(axis), source, node):
        return [None]
    return [tr.resolve(x.with_axis(axis))]
