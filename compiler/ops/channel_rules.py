"""Channel rules of the ops that keep channels in place, and of those that couple or move them (elementwise, Concat, Pad, Slice, Split)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

if TYPE_CHECKING:  # pragma: no cover
    from onnxcompress.compiler.channels import Tracer

from onnxcompress.compiler.ops.layout import ChannelLayout, Segment
from onnxcompress.compiler.ops.table import _register, _tracked, const, norm_axis, rank_of, shape_of


# ----------------------------------------------------------------------------------------------
# ops that keep channels where they are
# ----------------------------------------------------------------------------------------------

UNARY_ELEMENTWISE = (
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus", "Softsign", "HardSigmoid",
    "HardSwish", "Gelu", "Mish", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil",
    "Round", "Sign", "Cast", "Identity", "Dropout", "ThresholdedRelu", "Clip",
)


# ops that may follow a layer in a chain that is removed with it (compiler/removable.py)
CHAIN_OPS = frozenset({"BatchNormalization", "Relu", "Clip", "LeakyRelu", "HardSwish", "Sigmoid", "Elu", "PRelu", "Tanh"})


@_register(*UNARY_ELEMENTWISE)
def _unary(node: gs.Node, ins, tr: "Tracer"):
    x = ins[0]
    if x is not None:
        tr.member(x, node)
    # Clip's min/max and other extra inputs are scalars: nothing to cut
    return [x] + [None] * (len(node.outputs) - 1)


@_register("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def _pool(node: gs.Node, ins, tr: "Tracer"):
    x = ins[0]
    if x is not None and (x.axis != 1 or x.block is not None):
        tr.freeze(x, f"{node.op} '{node.name}' with channels off axis 1")
        return [None] * len(node.outputs)
    if x is not None:
        tr.member(x, node)
    return [x] + [None] * (len(node.outputs) - 1)


@_register("BatchNormalization", "InstanceNormalization")
def _batchnorm(node: gs.Node, ins, tr: "Tracer"):
    x = ins[0]
    n_params = 4 if node.op == "BatchNormalization" else 2
    if x is None:
        return [None] * len(node.outputs)
    if x.axis != 1 or x.block is not None:
        tr.freeze(x, f"{node.op} '{node.name}' with channels off axis 1")
        return [None] * len(node.outputs)
    for i in range(1, 1 + n_params):
        if const(node.inputs[i]) is None:
            tr.freeze(x, f"{node.op} '{node.name}' has computed parameters")
            return [x]
        tr.slice(node, i, 0, x, role="bn_scale" if i == 1 else "param")
    return [x] + [None] * (len(node.outputs) - 1)


@_register("PRelu")
def _prelu(node: gs.Node, ins, tr: "Tracer"):
    x = ins[0]
    slope = const(node.inputs[1])
    if x is None:
        return [None]
    r = rank_of(node.inputs[0])
    if slope is None or r is None:
        tr.freeze(x, f"PRelu '{node.name}' has a computed slope")
        return [x]
    _slice_broadcast_const(node, 1, x, r, tr)
    return [x]


def _pad_values(node: gs.Node) -> tuple[np.ndarray | None, float | None]:
    """(pads, constant value) of a Pad of any opset; None where they are computed."""
    if len(node.inputs) > 1 and node.inputs[1].name:
        pads = const(node.inputs[1])
    else:
        pads = np.asarray(node.attrs.get("pads", []), dtype=np.int64)
    value: float | None = float(node.attrs.get("value", 0.0))
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = const(node.inputs[2])
        value = None if c is None else float(np.asarray(c).reshape(-1)[0]) if np.asarray(c).size else 0.0
    return (None if pads is None else np.asarray(pads, dtype=np.int64).reshape(-1)), value


@_register("Pad")
def _pad(node: gs.Node, ins, tr: "Tracer"):
    x = ins[0]
    if x is None:
        return [None]
    pads, value = _pad_values(node)
    r = rank_of(node.inputs[0])
    axes_in = const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
    if pads is None or r is None or axes_in is not None or len(pads) != 2 * r:
        tr.freeze(x, f"Pad '{node.name}' with computed or per-axis pads")
        return [x]
    before, after = int(pads[x.axis]), int(pads[x.axis + r])
    if before == 0 and after == 0:
        tr.member(x, node)
        return [x]
    mode = node.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if x.block is not None or before < 0 or after < 0 or mode != "constant" or value != 0.0:
        tr.freeze(x, f"Pad '{node.name}' pads the channel axis" + ("" if x.block is None else " of a flattened block"))
        return [None]
    # zero channels added on the channel axis (the "option A" shortcut of the CIFAR ResNets): an
    # index map with offsets. The new channels are spaces of their own, constant zero, so free
    # to drop: after a cut the pads become the kept counts (PadFix)
    tr.member(x, node)
    zb = ChannelLayout(x.axis, (Segment(tr.new_space(node, before, zero=True), before),)) if before else None
    za = ChannelLayout(x.axis, (Segment(tr.new_space(node, after, zero=True, offset=before + x.channels), after),)) if after else None
    tr.fix_pad(node, x.axis, zb, za)
    segments = (zb.segments if zb else ()) + x.segments + (za.segments if za else ())
    return [ChannelLayout(x.axis, segments)]


def _slice_params(node: gs.Node, rank: int) -> list[tuple[int, int, int, int]] | None:
    """[(axis, start, end, step)] of a Slice of any opset, axes normalised; None if computed."""
    if len(node.inputs) >= 3:
        vals = []
        for i in range(1, 5):
            if i < len(node.inputs) and node.inputs[i].name:
                c = const(node.inputs[i])
                if c is None:
                    return None
                vals.append([int(v) for v in np.asarray(c).reshape(-1)])
            else:
                vals.append(None)
        starts, ends, axes, steps = vals
    else:
        starts = [int(v) for v in node.attrs.get("starts", [])]
        ends = [int(v) for v in node.attrs.get("ends", [])]
        axes = [int(v) for v in node.attrs["axes"]] if "axes" in node.attrs else None
        steps = None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    return [(norm_axis(a, rank), s, e, st) for a, s, e, st in zip(axes, starts, ends, steps)]


@_register("Slice")
def _slice(node: gs.Node, ins, tr: "Tracer"):
    x = ins[0]
    if x is None:
        return [None]
    r = rank_of(node.inputs[0])
    params = _slice_params(node, r) if r is not None else None
    if params is None:
        tr.freeze(x, f"Slice '{node.name}' with computed starts, ends, axes or steps")
        return [None]
    on_channels = [p for p in params if p[0] == x.axis]
    width = x.width()
    if on_channels:
        _, start, end, step = on_channels[0]
        start = max(0, min(width, start + width if start < 0 else start))
        end = max(0, min(width, end + width if end < 0 else end))
        if (start, end, step) != (0, width, 1):
            # a channel range [start, end) is an index map with an offset (GhostNet, ReXNet):
            # the input's spaces are split at the range's ends and the output carries the parts
            # inside it; after a cut the range becomes the kept channels' positions (SliceFix)
            if step != 1 or x.block is not None or end <= start:
                tr.freeze(x, f"Slice '{node.name}' takes a strided or flattened channel range")
                return [None]
            x = tr.refine(x, {start, end})
            inside, before, offset = [], [], 0
            for seg in x.segments:
                if start <= offset < end:
                    inside.append(seg)
                elif offset < start:
                    before.append(seg)
                offset += seg.width
            tr.member(x, node)
            out = ChannelLayout(x.axis, tuple(inside))
            tr.fix_slice(node, x.axis, ChannelLayout(x.axis, tuple(before)) if before else None, out)
            return [out]
    if x.block is not None and any(p[0] == x.axis for p in params):
        tr.freeze(x, f"Slice '{node.name}' slices a flattened block")
        return [None]
    # slicing other axes (the spatial subsampling x[:, :, ::2, ::2] of an option-A shortcut)
    # passes the channels through
    tr.member(x, node)
    return [x]


@_register("Resize", "Upsample")
def _resize(node: gs.Node, ins, tr: "Tracer"):
    """Resizes the spatial axes; channels pass through. Its `sizes` (input 3) holds the channel
    count too: read at run time from its own input's shape (timm's F.interpolate(x, size=...):
    Concat(Shape(x)[0:2], [h, w])) it follows a cut; a constant or any other count freezes."""
    x = ins[0]
    sizes = node.inputs[3] if node.op == "Resize" and len(node.inputs) > 3 and node.inputs[3].name else None
    if sizes is not None:
        reads = tr.channel_refs(sizes.name)
        entries = tr.shape_values.get(sizes.name)
        own = x is not None and entries is not None and len(entries) > x.axis and reads == [entries[x.axis]] \
            and reads[0].tensor == node.inputs[0].name and reads[0].axis == x.axis
        if reads and not own:
            tr.freeze_channel_reads(sizes.name, f"the channel count of a tensor is used by {node.op} '{node.name}'")
        if x is not None and not own:
            tr.freeze(x, f"{node.op} '{node.name}' sets the channel count in its sizes")
            return [None]
    if x is not None:
        if x.axis != 1 or x.block is not None:
            tr.freeze(x, f"{node.op} '{node.name}' with channels off axis 1")
            return [None]
        tr.member(x, node)
    return [x]


@_register("LayerNormalization")
def _layernorm(node: gs.Node, ins, tr: "Tracer"):
    """LayerNorm over the channel axis alone (ConvNeXt's channels-last LayerNorm): its scale and
    bias are cut with the channels. Lossy, as Torch-Pruning's: the mean and variance are then
    taken over the remaining channels. Over other axes (or more than the channel axis) the
    channels are frozen."""
    x = ins[0]
    r = rank_of(node.inputs[0])
    if x is None or r is None:
        return [x] + [None] * (len(node.outputs) - 1)
    axis = norm_axis(int(node.attrs.get("axis", -1)), r)
    if x.block is not None or axis != x.axis or axis != r - 1:
        if axis <= x.axis:
            tr.freeze(x, f"LayerNormalization '{node.name}' normalises across channels and other axes")
        else:
            tr.member(x, node)
        return [x] + [None] * (len(node.outputs) - 1)
    for i in (1, 2):
        if i < len(node.inputs) and node.inputs[i].name:
            c = const(node.inputs[i])
            if c is None:
                tr.freeze(x, f"LayerNormalization '{node.name}' has computed parameters")
                return [x] + [None] * (len(node.outputs) - 1)
            tr.slice(node, i, c.ndim - 1, x.with_axis(0), role="bn_scale" if i == 1 else "param")
    tr.member(x, node)
    return [x] + [None] * (len(node.outputs) - 1)


def _split_sizes(node: gs.Node, width: int) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1].name:
        c = const(node.inputs[1])
        return None if c is None else [int(v) for v in np.asarray(c).reshape(-1)]
    if "split" in node.attrs:
        return [int(v) for v in node.attrs["split"]]
    n = int(node.attrs.get("num_outputs", len(node.outputs)))
    if n <= 0:
        return None
    base = -(-width // n)  # the last chunk is smaller (opset 18's num_outputs)
    return [base] * (n - 1) + [width - base * (n - 1)]


@_register("Split")
def _split(node: gs.Node, ins, tr: "Tracer"):
    """Split along the channel axis (MobileViT, ShuffleNetV2, split-transform-merge blocks): each
    output carries a consecutive channel range, an index map with an offset; after a cut the
    split sizes become the kept counts (SplitFix). Along another axis channels pass through."""
    x = ins[0]
    n = len(node.outputs)
    if x is None:
        return [None] * n
    r = rank_of(node.inputs[0])
    axis = norm_axis(int(node.attrs.get("axis", 0)), r) if r is not None else None
    if axis is None:
        tr.freeze(x, f"Split '{node.name}' of unknown rank")
        return [None] * n
    if axis != x.axis:
        if x.block is not None:
            tr.freeze(x, f"Split '{node.name}' of a flattened block")
            return [None] * n
        tr.member(x, node)
        return [x] * n
    sizes = _split_sizes(node, x.width())
    if x.block is not None or sizes is None or sum(sizes) != x.width() or len(sizes) != n or min(sizes) <= 0:
        tr.freeze(x, f"Split '{node.name}' with computed or unexpected sizes")
        return [None] * n
    bounds = np.cumsum(sizes).tolist()
    x = tr.refine(x, set(bounds[:-1]))
    outs: list[list[Segment]] = [[] for _ in range(n)]
    offset, k = 0, 0
    for seg in x.segments:
        while offset >= bounds[k]:
            k += 1
        outs[k].append(seg)
        offset += seg.width
    layouts = [ChannelLayout(x.axis, tuple(o)) for o in outs]
    tr.member(x, node)
    tr.fix_split(node, x.axis, tuple(layouts))
    return layouts


@_register("Softmax", "LogSoftmax")
def _softmax(node: gs.Node, ins, tr: "Tracer"):
    x = ins[0]
    r = rank_of(node.inputs[0])
    if x is None or r is None:
        return [None]
    axis = norm_axis(int(node.attrs.get("axis", -1)), r)
    if axis == x.axis:
        # normalises across channels: cutting one changes every other output; only the class
        # subset pass (which wants exactly that) goes through here
        tr.freeze(x, f"{node.op} '{node.name}' normalises across these channels")
    else:
        tr.member(x, node)
    return [x]


# ----------------------------------------------------------------------------------------------
# ops that couple or move channels
# ----------------------------------------------------------------------------------------------


def _slice_broadcast_const(node: gs.Node, index: int, layout: ChannelLayout, out_rank: int, tr: "Tracer") -> bool:
    """A constant operand that broadcasts against a tracked tensor: if it has a full channel
    dimension it must be cut with the channels (returns True when handled)."""
    c = const(node.inputs[index])
    if c is None:
        return False
    if c.ndim == 0:
        return True
    axis_in_c = layout.axis - (out_rank - c.ndim)
    if axis_in_c < 0 or c.shape[axis_in_c] == 1:
        return True
    if c.shape[axis_in_c] == layout.width():
        tr.slice(node, index, axis_in_c, layout, role="param")
        return True
    tr.freeze(layout, f"{node.op} '{node.name}' has a constant of unexpected shape {c.shape}")
    return True


@_register("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow")
def _elementwise(node: gs.Node, ins, tr: "Tracer"):
    out_rank = rank_of(node.outputs[0])
    if not _tracked(ins):
        return [None]
    if out_rank is None:
        tr.freeze_all(ins, f"{node.op} '{node.name}' has an unknown output rank")
        return [None]
    # numpy broadcasting aligns trailing axes: express every tracked axis in the output's rank
    aligned = [
        l.with_axis(l.axis + out_rank - (rank_of(t) or out_rank)) for t, l in zip(node.inputs, ins) if l is not None
    ]
    # a single channel against wider layouts (MobileViTv2's context score (N, 1, P, Np) times
    # the keys (N, C, P, Np)) is a size-1 broadcast, not a coupling: the wider channels pass
    # through, and that one channel is frozen (cutting it would leave nothing to broadcast)
    wide = [l for l in aligned if l.width() > 1]
    if wide and len(wide) < len(aligned) and all(l.block is None and l.axis == wide[0].axis for l in aligned):
        for l in aligned:
            if l.width() == 1:
                tr.member(l, node)
                tr.freeze(l, f"{node.op} '{node.name}' broadcasts this single channel across other channels")
        aligned = wide
    ref = aligned[0]
    for i, (t, l) in enumerate(zip(node.inputs, ins)):
        if l is not None:
            continue
        if isinstance(t, gs.Constant):
            _slice_broadcast_const(node, i, ref, out_rank, tr)
            continue
        shape = shape_of(t)
        ax = ref.axis - (out_rank - len(shape)) if shape is not None else -1
        # a computed operand that broadcasts over the channels (size 1 there) is harmless
        if shape is None or (ax >= 0 and shape[ax] != 1):
            tr.freeze_all(ins, f"{node.op} '{node.name}' mixes tracked channels with an untracked tensor")
            return [None]
    for other in aligned[1:]:
        if not tr.unify(ref, other, node):
            return [None]
    for l in aligned:
        tr.member(l, node)
    return [ref]


@_register("Concat")
def _concat(node: gs.Node, ins, tr: "Tracer"):
    r = rank_of(node.outputs[0])
    if r is None:
        tr.freeze_all(ins, f"Concat '{node.name}' has an unknown rank")
        return [None]
    axis = norm_axis(int(node.attrs["axis"]), r)
    tracked = _tracked(ins)
    if not tracked:
        return [None]
    if any(l.axis != axis or l.block is not None for l in tracked):
        # concatenation along another axis: every input must carry the same channels
        first = tracked[0]
        if any(l.axis != first.axis for l in tracked) or len(tracked) != len(ins):
            tr.freeze_all(ins, f"Concat '{node.name}' along a non-channel axis with mixed inputs")
            return [None]
        for other in tracked[1:]:
            if not tr.unify(first, other, node):
                return [None]
        return [first]
    segments: list[Segment] = []
    for t, l in zip(node.inputs, ins):
        if l is None:
            shape = shape_of(t)
            if shape is None or not isinstance(shape[axis], int):
                tr.freeze_all(ins, f"Concat '{node.name}' has an input of unknown width")
                return [None]
            space = tr.new_space(node, int(shape[axis]), frozen=f"untracked input '{t.name}' of Concat '{node.name}'",
                                 offset=sum(s.width for s in segments))
            segments.append(Segment(space, int(shape[axis])))
        else:
            segments.extend(l.segments)
            tr.member(l, node)
    return [ChannelLayout(axis, tuple(segments))]
