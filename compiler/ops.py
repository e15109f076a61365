"""The one table of per-op knowledge: how channels flow through each op type under pruning.

Each rule receives a node, the channel layouts of its inputs (None where a tensor carries no
tracked channels: the network input, shape tensors, constants) and a `Tracer`
(compiler/channels.py) through which it records what pruning a channel would have to cut; it returns the layouts of the
node's outputs. An op type missing from the table is never guessed: its tracked inputs are frozen
with the reason "unknown op", and its outputs carry no tracked channels.

Terminology (after Torch-Pruning): a *space* is the output channel set of one layer (Conv, Gemm,
MatMul); spaces that must shrink together (residual adds, depthwise convs) are merged into one
*channel group*. A layout says which spaces, in which order, make up a tensor's channel axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import onnx_graphsurgeon as gs

if TYPE_CHECKING:  # pragma: no cover
    from onnxcompress.compiler.channels import Tracer


@dataclass(frozen=True)
class DimRef:
    """The run-time size of dimension `axis` of tensor `tensor` (read by a Shape op);
    `channels` when that dimension is a tracked channel axis (its size changes under pruning)."""

    tensor: str
    axis: int
    channels: bool


@dataclass(frozen=True)
class Segment:
    """`length` consecutive channels of one space."""

    space: int
    length: int


@dataclass(frozen=True)
class ChannelLayout:
    """Which channels a tensor's `axis` carries.

    When `block` is set, `axis` is a flattened axis holding a whole (C, H, W)-like block in
    row-major order, and the channels sit at `block_axis` of that block (Flatten/Reshape into a
    fully connected layer, in NCHW or NHWC order alike).
    """

    axis: int
    segments: tuple[Segment, ...]
    block: tuple[int, ...] | None = None
    block_axis: int = 0

    @property
    def channels(self) -> int:
        return sum(s.length for s in self.segments)

    @property
    def spaces(self) -> tuple[int, ...]:
        return tuple(s.space for s in self.segments)

    def with_axis(self, axis: int) -> "ChannelLayout":
        return ChannelLayout(axis, self.segments, self.block, self.block_axis)

    def channel_mask(self, keep: dict[int, np.ndarray]) -> np.ndarray:
        """Boolean mask over this layout's channels; `keep` maps space -> kept channel indices
        (spaces absent from `keep` keep everything)."""
        parts = []
        for seg in self.segments:
            m = np.zeros(seg.length, dtype=bool)
            if seg.space in keep:
                m[np.asarray(keep[seg.space], dtype=np.int64)] = True
            else:
                m[:] = True
            parts.append(m)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def indices(self, keep: dict[int, np.ndarray]) -> np.ndarray:
        """Indices along `axis` to keep. For a plain single-space layout the order of `keep` is
        kept (the class-subset pass reorders outputs); otherwise indices come out sorted."""
        if self.block is None and len(self.segments) == 1 and self.segments[0].space in keep:
            return np.asarray(keep[self.segments[0].space], dtype=np.int64)
        mask = self.channel_mask(keep)
        if self.block is None:
            return np.flatnonzero(mask)
        shape = list(self.block)
        full = np.arange(int(np.prod(shape))).reshape(shape)
        return np.sort(np.take(full, np.flatnonzero(mask), axis=self.block_axis).reshape(-1))

    def width(self) -> int:
        """Size of `axis` in the tensor."""
        return self.channels if self.block is None else int(np.prod(self.block))


Rule = Callable[[gs.Node, Sequence[ChannelLayout | None], "Tracer"], list[ChannelLayout | None]]


@dataclass(frozen=True)
class OpInfo:
    rule: Rule
    quantizable: bool = False  # has a weight that the quantize pass can store in fewer bits
    layer: bool = False  # a layer in the cost model's sense (Conv / Gemm / MatMul)


OP_TABLE: dict[str, OpInfo] = {}


def _register(*ops: str, quantizable: bool = False, layer: bool = False) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        for op in ops:
            OP_TABLE[op] = OpInfo(fn, quantizable=quantizable, layer=layer)
        return fn

    return deco


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def rank_of(t: gs.Tensor) -> int | None:
    if isinstance(t, gs.Constant):
        return t.values.ndim
    return len(t.shape) if t.shape is not None else None


def shape_of(t: gs.Tensor) -> tuple | None:
    if isinstance(t, gs.Constant):
        return tuple(t.values.shape)
    return tuple(t.shape) if t.shape is not None else None


def const(t: gs.Tensor) -> np.ndarray | None:
    return t.values if isinstance(t, gs.Constant) else None


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _tracked(ins: Sequence[ChannelLayout | None]) -> list[ChannelLayout]:
    return [l for l in ins if l is not None]


def is_depthwise(node: gs.Node) -> bool:
    w = const(node.inputs[1]) if len(node.inputs) > 1 else None
    group = int(node.attrs.get("group", 1))
    return w is not None and group > 1 and w.shape[1] == 1 and w.shape[0] == group


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
    ends = np.cumsum([s.length for s in x.segments]).tolist()
    inner = {e % per_group for e in ends}
    x = tr.refine(x, {k * per_group + b for k in range(groups) for b in inner if 0 < k * per_group + b < x.channels})
    chunks, current, size = [], [], 0
    for seg in x.segments:
        current.append(seg)
        size += seg.length
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
                offset += seg.length
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
    x = ins[0]
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
        offset += seg.length
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
                                 offset=sum(s.length for s in segments))
            segments.append(Segment(space, int(shape[axis])))
        else:
            segments.extend(l.segments)
            tr.member(l, node)
    return [ChannelLayout(axis, tuple(segments))]


def _flatten_layout(x: ChannelLayout, in_shape: tuple, start: int, node: gs.Node, tr: "Tracer") -> ChannelLayout | None:
    """Layout after flattening dims [start:] of a tensor into one axis (`start`)."""
    block = in_shape[start:]
    if x.block is not None or any(not isinstance(d, int) for d in block):
        tr.freeze(x, f"{node.op} '{node.name}' flattens a block of unknown or nested shape")
        return None
    if x.axis < start:
        tr.freeze(x, f"{node.op} '{node.name}' folds the channel axis into the batch")
        return None
    tr.member(x, node)
    if node.op == "Reshape":
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
    x = ins[0]
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
        block = in_shape[1:]
        if any(not isinstance(d, int) for d in block):
            tr.freeze(x, f"Reshape '{node.name}' flattens a block of unknown shape")
            return None
        tr.member(x, node)
        return ChannelLayout(1, x.segments, tuple(int(d) for d in block), x.axis - 1)
    rest_reads_channels = any(isinstance(e, DimRef) and e.channels for e in target[x.axis + 1 :])
    if x.block is None and len(target) > x.axis and all(copies(target[i], i) for i in range(x.axis + 1)) and not rest_reads_channels:
        tr.member(x, node)
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


def rule_for(op: str) -> OpInfo | None:
    return OP_TABLE.get(op)


QUANTIZABLE_OPS = frozenset(op for op, info in OP_TABLE.items() if info.quantizable)
LAYER_OPS = frozenset(op for op, info in OP_TABLE.items() if info.layer)
