"""The op handlers of the bridge: one small torch function per ONNX op family, registered in
nodes.HANDLERS with `@handles(...)`. An op without a handler is refused when a module is built."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import Tensor

from onnxcompress.compiler.bridge.nodes import TORCH_DTYPES, NodeInfo, RunContext, handles, to_tensor
from onnxcompress.compiler.errors import UnsupportedOpError
from onnxcompress.compiler.ops import AXES_INPUT_SINCE

# ---------------------------------------------------------------------------------------------
# Shared op helpers
# ---------------------------------------------------------------------------------------------


def _unsupported(node: NodeInfo, what: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"the PyTorch bridge does not support {node.op_type} {what} (node {node.name!r})")


def _ints(t: Any) -> list[int]:
    """An int list from an attribute list or a 0/1-D integer tensor."""
    if isinstance(t, Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _spatial_pads(node: NodeInfo, sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> list[int]:
    """ONNX pads [b1..bn, e1..en] after auto_pad resolution."""
    nd = len(sizes)
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(node.attr("pads", [0] * (2 * nd)))
        return pads if len(pads) == 2 * nd else [0] * (2 * nd)
    if auto == "VALID":
        return [0] * (2 * nd)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise _unsupported(node, f"auto_pad={auto}")
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small = total // 2
        begin = small if auto == "SAME_UPPER" else total - small
        begins.append(begin)
        ends.append(total - begin)
    return begins + ends


def _torch_pad_order(pads: Sequence[int], nd: int) -> list[int]:
    """ONNX [b1..bn, e1..en] for the last nd axes -> F.pad's (last axis first) pairs."""
    out: list[int] = []
    for i in reversed(range(nd)):
        out += [pads[i], pads[i + nd]]
    return out


def _broadcast_legacy(node: NodeInfo, a: Tensor, b: Tensor) -> Tensor:
    """Opset < 7 binary ops broadcast B starting at `axis` when broadcast=1."""
    if node.opset < 7 and node.attr("broadcast", 0) and "axis" in node.attrs and b.dim() < a.dim():
        axis = _axis(node.attr("axis"), a.dim())
        return b.reshape([1] * axis + list(b.shape) + [1] * (a.dim() - axis - b.dim()))
    return b


# ---------------------------------------------------------------------------------------------
# Op handlers: one small function per op family
# ---------------------------------------------------------------------------------------------


@handles("Conv")
def _conv(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    nd = w.dim() - 2
    if nd not in (1, 2, 3):
        raise _unsupported(node, f"with {nd} spatial dims")
    strides = list(node.attr("strides", [1] * nd))
    dilations = list(node.attr("dilations", [1] * nd))
    pads = _spatial_pads(node, x.shape[2:], w.shape[2:], strides, dilations)
    if pads[:nd] == pads[nd:]:
        padding = pads[:nd]
    else:  # asymmetric: torch only pads symmetrically, so pad explicitly first
        x = F.pad(x, _torch_pad_order(pads, nd))
        padding = [0] * nd
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return [conv(x, w, b, strides, padding, dilations, node.attr("group", 1))]


@handles("Gemm")
def _gemm(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    if node.attr("transA", 0):
        a = a.t()
    if node.attr("transB", 0):
        b = b.t()
    y = a @ b
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return [y]


@handles("MatMul")
def _matmul(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    return [torch.matmul(args[0], args[1])]


def _int_div(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer Div truncates


_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _int_div,
    "Pow": torch.pow,
}


@handles(*_BINARY)
def _binary(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    a, b = args[0], args[1]
    return [_BINARY[node.op_type](a, _broadcast_legacy(node, a, b))]


_VARIADIC: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Sum": torch.add,
    "Max": torch.maximum,
    "Min": torch.minimum,
}


@handles(*_VARIADIC)
def _variadic(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    fn = _VARIADIC[node.op_type]
    y = args[0]
    for t in args[1:]:
        y = fn(y, t)
    return [y]


_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Identity": lambda x: x,
    "Sqrt": torch.sqrt,
    "Exp": torch.exp,
    "Log": torch.log,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Reciprocal": torch.reciprocal,
    "Erf": torch.erf,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
}


@handles(*_UNARY)
def _unary(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    return [_UNARY[node.op_type](args[0])]


@handles("LeakyRelu")
def _leaky_relu(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    return [F.leaky_relu(args[0], node.attr("alpha", 0.01))]


@handles("PRelu")
def _prelu(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x, slope = args
    return [torch.where(x >= 0, x, x * slope)]  # numpy-style broadcast of the slope, as ONNX says


@handles("Elu")
def _elu(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    return [F.elu(args[0], node.attr("alpha", 1.0))]


@handles("HardSigmoid")
def _hard_sigmoid(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    return [torch.clamp(args[0] * node.attr("alpha", 0.2) + node.attr("beta", 0.5), 0.0, 1.0)]


@handles("HardSwish")
def _hard_swish(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    return [F.hardswish(args[0])]


@handles("Clip")
def _clip(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x = args[0]
    if node.opset < 11:  # bounds are attributes before opset 11
        lo, hi = node.attr("min"), node.attr("max")
    else:
        lo = args[1] if len(args) > 1 else None
        hi = args[2] if len(args) > 2 else None
    if lo is None and hi is None:
        return [x]
    return [torch.clamp(x, min=lo, max=hi)]


@handles("Softmax", "LogSoftmax")
def _softmax(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x = args[0]
    fn = torch.softmax if node.op_type == "Softmax" else torch.log_softmax
    if node.opset >= 13:
        return [fn(x, dim=node.attr("axis", -1))]
    # Before opset 13 the input is coerced to 2-D at `axis` and normalised over the second part.
    axis = _axis(node.attr("axis", 1), x.dim())
    shape = x.shape
    flat = x.reshape(math.prod(shape[:axis]), math.prod(shape[axis:]))
    return [fn(flat, dim=1).reshape(shape)]


@handles("BatchNormalization")
def _batch_norm(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x, scale, bias, mean, var = args[:5]
    if node.attr("spatial", 1) != 1:
        raise _unsupported(node, "with spatial=0")
    eps = node.attr("epsilon", 1e-5)
    if ctx.bn_sums is not None:
        # Recalibration: normalise with the batch's statistics and pool exact sums.
        dims = [0] + list(range(2, x.dim()))
        d = x.detach().double()
        acc = ctx.bn_sums.setdefault(node.name, [0, 0.0, 0.0])
        acc[0] += x.numel() // x.shape[1]
        acc[1] = acc[1] + d.sum(dims)
        acc[2] = acc[2] + (d * d).sum(dims)
        return [F.batch_norm(x, None, None, scale, bias, training=True, eps=eps)]
    # ONNX momentum weighs the old running value; torch's weighs the new batch.
    momentum = 1.0 - node.attr("momentum", 0.9)
    return [F.batch_norm(x, mean, var, scale, bias, training=ctx.training, momentum=momentum, eps=eps)]


@handles("InstanceNormalization")
def _instance_norm(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x, scale, bias = args[:3]
    return [F.instance_norm(x, weight=scale, bias=bias, eps=node.attr("epsilon", 1e-5))]


@handles("GroupNormalization")
def _group_norm(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x, scale, bias = args[:3]
    groups = node.attr("num_groups")
    if scale.numel() != x.shape[1]:  # opset 18's per-group scale and bias (deprecated by onnx)
        raise _unsupported(node, "with a scale per group")
    return [F.group_norm(x, groups, scale, bias, eps=node.attr("epsilon", 1e-5))]


@handles("LayerNormalization")
def _layer_norm(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x, scale = args[0], args[1]
    bias = args[2] if len(args) > 2 and args[2] is not None else None
    axis = _axis(node.attr("axis", -1), x.dim())
    dims = list(range(axis, x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + node.attr("epsilon", 1e-5)) * scale
    return [y + bias if bias is not None else y]


def _pool_geometry(
    node: NodeInfo, x: Tensor, dilated: bool
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(kernel, strides, dilations, onnx pads, extra end padding) so that a plain floor-mode torch
    pool over the explicitly padded input yields exactly ONNX's output size (ceil_mode included)."""
    kernel = list(node.attr("kernel_shape"))
    nd = len(kernel)
    strides = list(node.attr("strides", [1] * nd))
    dilations = list(node.attr("dilations", [1] * nd)) if dilated else [1] * nd
    sizes = list(x.shape[2:])
    pads = _spatial_pads(node, sizes, kernel, strides, dilations)
    ceil_mode = node.attr("ceil_mode", 0)
    extra = []
    for i in range(nd):
        span = sizes[i] + pads[i] + pads[i + nd]
        eff = (kernel[i] - 1) * dilations[i] + 1
        if ceil_mode:
            out = -(-(span - eff) // strides[i]) + 1
            if (out - 1) * strides[i] >= sizes[i] + pads[i]:
                out -= 1  # a window may not start in the right padding
        else:
            out = (span - eff) // strides[i] + 1
        extra.append(max(0, (out - 1) * strides[i] + eff - span))
    return kernel, strides, dilations, pads, extra


@handles("MaxPool")
def _max_pool(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x = args[0]
    if node.attr("storage_order", 0):
        raise _unsupported(node, "with storage_order=1")
    kernel, strides, dilations, pads, extra = _pool_geometry(node, x, dilated=True)
    nd = len(kernel)
    full = pads[:nd] + [p + e for p, e in zip(pads[nd:], extra)]
    if any(full):
        x = F.pad(x, _torch_pad_order(full, nd), value=float("-inf"))
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
    return [pool(x, kernel, strides, 0, dilations)]


@handles("AveragePool")
def _avg_pool(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x = args[0]
    if any(d != 1 for d in node.attr("dilations", [])):
        raise _unsupported(node, "with dilations")
    kernel, strides, _, pads, extra = _pool_geometry(node, x, dilated=False)
    nd = len(kernel)
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
    if not any(pads) and not any(extra):
        return [pool(x, kernel, strides)]
    # Divide window sums by the number of cells that count: real cells, plus the pads when
    # count_include_pad, never the extra cells that only exist to host ceil_mode windows.
    full = pads[:nd] + [p + e for p, e in zip(pads[nd:], extra)]
    order = _torch_pad_order(full, nd)
    summed = pool(F.pad(x, order), kernel, strides)
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype)
    if node.attr("count_include_pad", 0):
        ones = F.pad(ones, _torch_pad_order(pads, nd), value=1.0)
        ones = F.pad(ones, _torch_pad_order([0] * nd + extra, nd))
    else:
        ones = F.pad(ones, order)
    return [summed / pool(ones, kernel, strides)]


@handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x = args[0]
    dims = tuple(range(2, x.dim()))
    if node.op_type == "GlobalAveragePool":
        return [x.mean(dim=dims, keepdim=True)]
    return [x.amax(dim=dims, keepdim=True)]


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@handles("Pad")
def _pad(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x = args[0]
    rank = x.dim()
    mode = node.attr("mode", "constant")
    if node.opset < 11:  # pads (opset 1: "paddings") and value are attributes
        pads = list(node.attr("pads", node.attr("paddings", [])))
        value = float(node.attr("value", 0.0))
    else:
        pads = _ints(args[1])
        value_t = args[2] if len(args) > 2 else None
        value = float(value_t.reshape(-1)[0]) if value_t is not None and value_t.numel() else 0.0
        axes_t = args[3] if len(args) > 3 else None
        if axes_t is not None:  # opset 18: pads only for `axes`
            axes = [_axis(a, rank) for a in _ints(axes_t)]
            full = [0] * (2 * rank)
            for i, a in enumerate(axes):
                full[a], full[a + rank] = pads[i], pads[i + len(axes)]
            pads = full
    if mode not in _PAD_MODES:
        raise _unsupported(node, f"mode={mode}")
    order = _torch_pad_order(pads, rank)
    while order and order[-2:] == [0, 0]:  # drop untouched leading axes: F.pad takes trailing ones
        order = order[:-2]
    if not order:
        return [x]
    if mode == "constant":
        return [F.pad(x, order, value=value)]
    if len(order) // 2 > min(3, rank - 2):
        raise _unsupported(node, f"mode={mode} on the batch or channel axis")
    return [F.pad(x, order, mode=_PAD_MODES[mode])]


@handles("Concat")
def _concat(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    parts = [a for a in args if a is not None]
    return [torch.cat(parts, dim=_axis(node.attr("axis", 1), parts[0].dim()))]


@handles("Flatten")
def _flatten(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x = args[0]
    axis = _axis(node.attr("axis", 1), x.dim())
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@handles("Reshape")
def _reshape(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x = args[0]
    shape = list(node.attr("shape", [])) if node.opset < 5 else _ints(args[1])
    allow_zero = node.attr("allowzero", 0)
    # 0 copies the input's dim at that position (unless allowzero); -1 is inferred.
    new = [x.shape[i] if (s == 0 and not allow_zero) else s for i, s in enumerate(shape)]
    return [x.reshape(new)]


@handles("Transpose")
def _transpose(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x = args[0]
    perm = node.attr("perm", list(reversed(range(x.dim()))))
    return [x.permute(*perm)]


@handles("Squeeze")
def _squeeze(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x = args[0]
    if node.opset < 13:
        axes = node.attr("axes")
    else:
        axes = _ints(args[1]) if len(args) > 1 and args[1] is not None else None
    if axes is None:
        return [x.squeeze()]
    return [x.squeeze(tuple(_axis(a, x.dim()) for a in axes))]


@handles("Unsqueeze")
def _unsqueeze(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x = args[0]
    axes = list(node.attr("axes", [])) if node.opset < 13 else _ints(args[1])
    rank = x.dim() + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):  # axes index the output
        x = x.unsqueeze(a)
    return [x]


@handles("Dropout")
def _dropout(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    # Inference semantics always: students are fine-tuned as deployed, and KD targets are
    # deterministic. The optional mask output is all ones.
    x = args[0]
    return [x, torch.ones_like(x, dtype=torch.bool)]


@handles("Shape")
def _shape(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    dims = list(args[0].shape)
    start, end = node.attr("start", 0), node.attr("end", None)
    return [torch.tensor(dims[start:end], dtype=torch.int64)]


@handles("Gather")
def _gather(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    data, idx = args
    axis = _axis(node.attr("axis", 0), data.dim())
    idx = idx.long()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    picked = data.index_select(axis, idx.reshape(-1))
    return [picked.reshape(tuple(data.shape[:axis]) + tuple(idx.shape) + tuple(data.shape[axis + 1 :]))]


@handles("Cast")
def _cast(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    to = node.attr("to")
    if to not in TORCH_DTYPES:
        raise _unsupported(node, f"to {onnx.TensorProto.DataType.Name(to)}")
    return [args[0].to(TORCH_DTYPES[to])]


_REDUCE = {
    "ReduceMean": lambda x, d, k: x.mean(dim=d, keepdim=k),
    "ReduceSum": lambda x, d, k: x.sum(dim=d, keepdim=k),
    "ReduceMax": lambda x, d, k: x.amax(dim=d, keepdim=k),
    "ReduceMin": lambda x, d, k: x.amin(dim=d, keepdim=k),
}


@handles(*_REDUCE)
def _reduce(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x = args[0]
    if node.opset >= AXES_INPUT_SINCE[node.op_type]:
        axes = _ints(args[1]) if len(args) > 1 and args[1] is not None else None
    else:
        axes = node.attr("axes")
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.dim()))
    dims = tuple(_axis(a, x.dim()) for a in axes)
    return [_REDUCE[node.op_type](x, dims, bool(node.attr("keepdims", 1)))]


@handles("Split")
def _split(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x = args[0]
    axis = _axis(node.attr("axis", 0), x.dim())
    if node.opset < 13:
        sizes = node.attr("split")
    else:
        sizes = _ints(args[1]) if len(args) > 1 and args[1] is not None else None
    if not sizes:
        parts = node.attr("num_outputs", len(node.outputs))
        chunk = -(-x.shape[axis] // parts)  # opset 18: the last part may be smaller
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(parts)]
    return list(torch.split(x, list(sizes), dim=axis))


@handles("Slice")
def _slice(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x = args[0]
    if node.opset < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes, steps = node.attr("axes"), None
    else:
        starts, ends = _ints(args[1]), _ints(args[2])
        axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else None
        steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else None
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = list(steps) if steps is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(axis, x.dim())
        # Python's slice clamping is ONNX's, for both signs of step.
        idx = range(*slice(start, end, step).indices(x.shape[axis]))
        if step == 1:
            x = x.narrow(axis, idx.start, len(idx))
        else:
            x = x.index_select(axis, torch.tensor(list(idx), dtype=torch.int64))
    return [x]


@handles("ConstantOfShape")
def _constant_of_shape(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    value = node.attr("value")
    fill = to_tensor(np.asarray(value).reshape(-1)) if value is not None else torch.zeros(1)
    return [fill.reshape(()).expand(_ints(args[0])).clone()]


@handles("Expand")
def _expand(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x = args[0]
    return [x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(args[1]))))]


def _nearest_index(node: NodeInfo, size: int, out: int, scale: float, mode: str, rounding: str) -> Tensor:
    """Source index per output position for nearest resizing, per ONNX's formulas."""
    i = np.arange(out, dtype=np.float64)
    if mode == "half_pixel":
        src = (i + 0.5) / scale - 0.5
    elif mode == "pytorch_half_pixel":
        src = (i + 0.5) / scale - 0.5 if out > 1 else np.zeros_like(i)
    elif mode == "align_corners":
        src = i * (size - 1) / (out - 1) if out > 1 else np.zeros_like(i)
    elif mode == "asymmetric":
        src = i / scale
    elif mode == "tf_half_pixel_for_nn":
        src = (i + 0.5) / scale
    elif mode == "half_pixel_symmetric":
        adjust = out / (scale * size)
        src = size / 2 * (1 - adjust) + (i + 0.5) / scale - 0.5
    else:
        raise _unsupported(node, f"coordinate_transformation_mode={mode}")
    if rounding == "round_prefer_floor":
        idx = np.ceil(src - 0.5)
    elif rounding == "round_prefer_ceil":
        idx = np.floor(src + 0.5)
    elif rounding == "floor":
        idx = np.floor(src)
    elif rounding == "ceil":
        idx = np.ceil(src)
    else:
        raise _unsupported(node, f"nearest_mode={rounding}")
    return torch.from_numpy(np.clip(idx, 0, size - 1).astype(np.int64))


@handles("Resize", "Upsample")
def _resize(node: NodeInfo, args: list[Any], ctx: RunContext) -> list[Tensor]:
    x = args[0]
    mode = node.attr("mode", "nearest")
    if mode != "nearest":
        raise _unsupported(node, f"mode={mode} (only nearest)")
    if node.attr("antialias", 0) or node.attr("axes") is not None:
        raise _unsupported(node, "with antialias or axes")
    sizes_t = None
    if node.op_type == "Upsample":
        scales = node.attr("scales") if node.opset < 9 else args[1]
        coord, rounding = "asymmetric", "floor"  # Upsample is x_out / scale, floored
    elif node.opset < 11:
        scales = args[1]
        coord, rounding = "asymmetric", "floor"
    else:
        scales = args[2] if len(args) > 2 else None
        sizes_t = args[3] if len(args) > 3 else None
        coord = node.attr("coordinate_transformation_mode", "half_pixel")
        rounding = node.attr("nearest_mode", "round_prefer_floor")
        if coord == "tf_crop_and_resize":
            raise _unsupported(node, "coordinate_transformation_mode=tf_crop_and_resize")
    if sizes_t is not None and sizes_t.numel():
        outs = _ints(sizes_t)
        factors = [o / s for o, s in zip(outs, x.shape)]
    else:
        factors = [float(v) for v in (scales.reshape(-1).tolist() if isinstance(scales, Tensor) else scales)]
        outs = [int(math.floor(s * f)) for s, f in zip(x.shape, factors)]
    for axis, (size, out, f) in enumerate(zip(x.shape, outs, factors)):
        if out != size or f != 1.0:
            x = x.index_select(axis, _nearest_index(node, size, out, f, coord, rounding))
    return [x]

