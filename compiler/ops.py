"""The one table of per-op knowledge: how channels flow through each op type under pruning.

Each rule receives a node, the channel layouts of its inputs (None where a tensor carries no
tracked channels: the network input, shape tensors, constants) and a `Tracer` (compiler/ir.py)
through which it records what pruning a channel would have to cut; it returns the layouts of the
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
    from onnxcompress.compiler.ir import Tracer


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
    # grouped convolution (1 < group < channels): channels can only shrink group-uniformly;
    # we do not do that, so both sides are frozen
    reason = f"grouped Conv '{node.name}' (group={group})"
    if x is not None:
        tr.freeze(x, reason)
    space = tr.new_space(node, w.shape[0])
    out = ChannelLayout(1, (Segment(space, w.shape[0]),))
    tr.freeze(out, reason)
    return [out]


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


@_register("Pad")
def _pad(node: gs.Node, ins, tr: "Tracer"):
    x = ins[0]
    if x is None:
        return [None]
    pads = const(node.inputs[1]) if len(node.inputs) > 1 else np.asarray(node.attrs.get("pads", []))
    r = rank_of(node.inputs[0])
    axes_in = const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
    if pads is None or r is None or axes_in is not None:
        tr.freeze(x, f"Pad '{node.name}' with computed or per-axis pads")
        return [x]
    pads = np.asarray(pads).reshape(-1)
    if x.block is not None or pads[x.axis] != 0 or pads[x.axis + r] != 0:
        tr.freeze(x, f"Pad '{node.name}' pads the channel axis")
        return [None]
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
            space = tr.new_space(node, int(shape[axis]), frozen=f"untracked input '{t.name}' of Concat '{node.name}'")
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
        return [None]
    target = const(node.inputs[1])
    in_shape = shape_of(node.inputs[0])
    out_shape = shape_of(node.outputs[0])
    if target is None or in_shape is None or out_shape is None:
        tr.freeze(x, f"Reshape '{node.name}' with a computed target shape")
        return [None]
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


# ==============================================================================================
# per-op facts beyond the channel rules
# ==============================================================================================
# What the rest of the compiler knows about an op type, one row per op, so that no module keeps
# its own list of op names. Each flag is one question a module asks; the derived frozensets below
# are what they read. Where two modules ask similar questions with different answers (the ops a
# refit looks through vs the ops allowed after a classifier), the facts stay distinct: merging
# them would change behaviour. Ops absent from OP_FACTS have every flag False. These facts are
# independent of OP_TABLE's channel rules: an op may have facts without a rule (Shape, Dropout,
# the random generators) and a rule without facts.

@dataclass(frozen=True)
class OpFacts:
    fully_connected: bool = False  # a layer that is a matrix product (Gemm, MatMul): the search's "fc" feature
    bias_input: bool = False  # input 2 is an optional bias added per output channel (Conv, Gemm)
    weight_slots: frozenset[int] = frozenset()  # inputs that hold learned weights (the bridge's parameters)
    arithmetic: bool = False  # binary elementwise arithmetic (a weight read here is a learned offset / scale)
    view: bool = False  # only moves or reinterprets values: the bridge traces constants through it
    logits_view: bool = False  # reshapes scores without changing them: found between the logits and the output
    inference_noop: bool = False  # the identity at inference (removed by canonicalisation)
    random: bool = False  # draws random values: never constant-folded
    int8_glue: bool = False  # computes new values with an int8 kernel in onnxruntime (own output scale)
    int8_data_movement: bool = False  # moves/selects values: its output reuses its input's quantization
    shape_inputs: bool = False  # its inputs after the first are shapes/axes, not activations
    refit_pass_through: bool = False  # a least-squares refit looks through it to the layers behind
    class_tail: bool = False  # may sit between the classifier layer and the output (keeps the class axis)
    kd_feature: bool = False  # its output is a feature map worth distilling (attention/hint KD)
    training_output: str | None = None  # an extra output only training computes (the bridge cannot)
    axes_input_since: int | None = None  # the opset from which `axes` is an input instead of an attribute


def _facts(*flags: str, **values) -> OpFacts:
    return OpFacts(**{f: True for f in flags}, **values)


OP_FACTS: dict[str, OpFacts] = {
    "Conv": _facts("bias_input", "kd_feature", weight_slots=frozenset({1, 2})),
    "Gemm": _facts("fully_connected", "bias_input", weight_slots=frozenset({0, 1, 2})),
    "MatMul": _facts("fully_connected", weight_slots=frozenset({0, 1})),
    "BatchNormalization": _facts("kd_feature", weight_slots=frozenset({1, 2}), training_output="training statistics"),
    "PRelu": _facts("kd_feature", weight_slots=frozenset({1})),
    "Relu": _facts("refit_pass_through", "class_tail", "kd_feature"),
    "Clip": _facts("refit_pass_through", "class_tail", "kd_feature"),
    "Sigmoid": _facts("refit_pass_through", "class_tail", "kd_feature"),
    "LeakyRelu": _facts("refit_pass_through", "kd_feature"),
    "HardSigmoid": _facts("refit_pass_through", "kd_feature"),
    "HardSwish": _facts("refit_pass_through", "kd_feature"),
    "Elu": _facts("kd_feature"),
    "Tanh": _facts("kd_feature"),
    "Softmax": _facts("class_tail"),
    "LogSoftmax": _facts("class_tail"),
    "Add": _facts("arithmetic", "int8_glue", "kd_feature"),
    "Sum": _facts("arithmetic", "kd_feature"),
    "Mul": _facts("arithmetic", "kd_feature"),
    "Sub": _facts("arithmetic"),
    "Div": _facts("arithmetic"),
    "Concat": _facts("int8_glue", "kd_feature"),
    "MaxPool": _facts("int8_data_movement", "refit_pass_through", "class_tail", "kd_feature", training_output="Indices"),
    "AveragePool": _facts("int8_glue", "refit_pass_through", "class_tail", "kd_feature"),
    "GlobalAveragePool": _facts("int8_glue", "refit_pass_through", "class_tail"),
    "GlobalMaxPool": _facts("refit_pass_through", "class_tail"),
    "Flatten": _facts("view", "logits_view", "int8_data_movement", "refit_pass_through", "class_tail"),
    "Reshape": _facts("view", "logits_view", "int8_data_movement", "shape_inputs", "refit_pass_through", "class_tail"),
    "Squeeze": _facts("view", "logits_view", "int8_data_movement", "shape_inputs", "class_tail"),
    "Unsqueeze": _facts("view", "int8_data_movement", "shape_inputs", "class_tail"),
    "Transpose": _facts("view", "int8_data_movement", "class_tail"),
    "Identity": _facts("view", "logits_view", "inference_noop", "refit_pass_through", "class_tail"),
    "Cast": _facts("view", "class_tail"),
    "Shape": _facts("class_tail"),
    "Dropout": _facts("inference_noop"),
    "ReduceMean": _facts(axes_input_since=18),
    "ReduceSum": _facts(axes_input_since=13),
    "ReduceMax": _facts(axes_input_since=18),
    "ReduceMin": _facts(axes_input_since=18),
    **{op: _facts("random") for op in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")},
}


def facts(op: str) -> OpFacts:
    """The facts of an op type (all False for an op the table does not list)."""
    return OP_FACTS.get(op, _NO_FACTS)


_NO_FACTS = OpFacts()


def _ops_with(flag: str) -> frozenset[str]:
    return frozenset(op for op, f in OP_FACTS.items() if getattr(f, flag))


FULLY_CONNECTED_OPS = _ops_with("fully_connected")
BIAS_INPUT_OPS = _ops_with("bias_input")
ARITHMETIC_OPS = _ops_with("arithmetic")
VIEW_OPS = _ops_with("view")
LOGITS_VIEW_OPS = _ops_with("logits_view")
INFERENCE_NOOP_OPS = _ops_with("inference_noop")
RANDOM_OPS = _ops_with("random")
INT8_GLUE_OPS = _ops_with("int8_glue")
INT8_DATA_MOVEMENT_OPS = _ops_with("int8_data_movement")
SHAPE_INPUT_OPS = _ops_with("shape_inputs")
REFIT_PASS_THROUGH_OPS = _ops_with("refit_pass_through")
CLASS_TAIL_OPS = _ops_with("class_tail")
KD_FEATURE_OPS = _ops_with("kd_feature")
WEIGHT_SLOTS: dict[str, frozenset[int]] = {op: f.weight_slots for op, f in OP_FACTS.items() if f.weight_slots}
TRAINING_OUTPUTS: dict[str, str] = {op: f.training_output for op, f in OP_FACTS.items() if f.training_output}
AXES_INPUT_SINCE: dict[str, int] = {op: f.axes_input_since for op, f in OP_FACTS.items() if f.axes_input_since}

# the precisions (bits) the quantize pass can store a quantizable op's weight in (32: float, 16: fp16,
# 8: int8 QDQ, 4: int4 weight-only; passes/quantize/forms.py), widest first; the cost model, the
# pass and the search all read this one list
WEIGHT_PRECISIONS = (32, 16, 8, 4)
