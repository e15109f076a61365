"""The stored forms of a quantized layer, and reading them back: the bottom of the quantize
pass's mechanics (the activation Q/DQ pairs are in activations.py, the rewrite that emits a
precision map is in qdq.py).

A layer (Conv / Gemm / MatMul with a constant weight) has one of four precisions:

  32  untouched.
  16  fp16 weight behind a Cast: `Constant(fp16) -> Cast(to float) -> layer`. onnxruntime folds
      the Cast when a session starts, so the layer runs at exactly fp32 speed from a weight half
      the size. The alternative (fp16 activations and compute, Casts around the layer) is never
      faster here: onnxruntime's x86 CPU provider has no fp16 Conv kernel, so it inserts Casts
      back to float and runs the fp32 kernel anyway, and fp16 activations can overflow.
   8  int8 QDQ: weight int8 per output channel, symmetric ([-127, 127], zero point 0); bias
      int32 at scale x_scale * w_scale; activations uint8 per tensor, asymmetric, calibrated.
      This is the form onnxruntime fuses into QLinearConv / QGemm / QLinearAdd (u8s8 kernels:
      VNNI on this CPU) and that TensorRT and OpenVINO read.
   4  int4 weight-only: int4 weight per output channel, symmetric, behind DequantizeLinear
      (opset 21); the layer computes in fp32. The file really holds 4 bits per weight. The
      integers are chosen by GPTQ on calibration data (gptq.py): round-to-nearest int4
      loses 23 points of top-1 on the MLPerf Tiny ResNet-8, GPTQ under one.

`strip` turns any QDQ/Cast graph back into float (folding weight DequantizeLinear and fp16
Casts, dropping activation Q/DQ pairs) and returns the activation parameters and integer
weights it removed, so a later quantize step can re-emit the whole graph consistently without
calibrating or rounding again what did not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter

from onnxcompress.compiler.errors import ModelError
from onnxcompress.compiler.ops import QUANTIZABLE_OPS, WEIGHT_PRECISIONS

PRECISIONS = WEIGHT_PRECISIONS
LAYER_OPS = QUANTIZABLE_OPS  # layers whose constant weight gets a precision (the op table's `quantizable`)
INT4_MIN_OPSET = 21  # DequantizeLinear on int4 tensors
QDQ_MIN_OPSET = 13  # per-axis QuantizeLinear / DequantizeLinear

INT8_WEIGHT_MAX = 127  # symmetric int8 weights use [-127, 127] (zero point 0)
INT4_WEIGHT_MAX = 7  # symmetric int4 weights use [-7, 7]
_IR_FOR_OPSET = {21: 10, 22: 10, 23: 11}  # the IR version an opset needs (onnx.helper.VERSION_TABLE)


# ----------------------------------------------------------------------------------------------
# small typed values
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationParams:
    """uint8 per-tensor quantization of one activation: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int

    @staticmethod
    def from_range(lo: float, hi: float) -> "ActivationParams":
        # onnxruntime's own helper: widens the range to include 0, guards an empty range
        from onnxruntime.quantization.quant_utils import compute_scale_zp

        zp, scale = compute_scale_zp(np.array(lo, np.float32), np.array(hi, np.float32), np.array(0, np.uint8), np.array(255, np.uint8))
        return ActivationParams(float(scale), int(zp))


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A layer weight stored as integers: real = scale[c] * q along `axis` (symmetric)."""

    bits: int
    q: np.ndarray  # int8 storage of int8 or int4 values
    scale: np.ndarray  # float32, one per channel of `axis`
    axis: int


@dataclass(frozen=True)
class Stripped:
    """What `strip` removed from a graph: enough to re-emit the same quantization exactly.

    precisions: layer -> precision it had (32 for float layers).
    activations: float tensor -> the uint8 parameters of the Q/DQ pair it had.
    weights: layer -> its integer weight (int8 / int4 layers with per-channel scales).
    """

    precisions: Mapping[str, int] = field(default_factory=dict)
    activations: Mapping[str, ActivationParams] = field(default_factory=dict)
    weights: Mapping[str, QuantizedWeight] = field(default_factory=dict)



# ----------------------------------------------------------------------------------------------
# reading a graph
# ----------------------------------------------------------------------------------------------


def weight_axis(node: gs.Node, ndim: int) -> int:
    """The output-channel axis of a layer's weight (the per-channel quantization axis)."""
    if node.op == "Conv":
        return 0
    if node.op == "Gemm":
        return 0 if int(node.attrs.get("transB", 0)) else 1
    return ndim - 1  # MatMul: (..., K, N)


def producer(t: gs.Tensor) -> gs.Node | None:
    """The node that computes `t` (None for graph inputs and constants)."""
    return t.inputs[0] if len(t.inputs) == 1 else None


def _onnx_type(c: gs.Constant) -> int | None:
    """The ONNX element type of a constant, without loading lazily held (int4) values."""
    values = c._values  # noqa: SLF001 - gs keeps a not-yet-loaded constant's TensorProto here
    if isinstance(values, gs.ir.tensor.LazyValues):
        return int(values.tensor.data_type)
    try:
        return int(onnx.helper.np_dtype_to_tensor_dtype(np.asarray(values).dtype))
    except (KeyError, ValueError, TypeError):
        return None


def _weight_source(node: gs.Node) -> gs.Node | None:
    """The DequantizeLinear or Cast that produces a layer's weight from a constant, if any."""
    if node.op not in LAYER_OPS or len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Variable):
        return None
    src = producer(node.inputs[1])
    if src is not None and src.op in ("DequantizeLinear", "Cast") and src.inputs and isinstance(src.inputs[0], gs.Constant):
        return src
    return None


def read_precisions(graph: gs.Graph) -> dict[str, int]:
    """layer name -> the precision its weight is stored in (32 for a plain float weight)."""
    out: dict[str, int] = {}
    for node in graph.nodes:
        if node.op not in LAYER_OPS or len(node.inputs) < 2:
            continue
        src = _weight_source(node)
        bits = 32
        if src is not None and src.op == "DequantizeLinear":
            bits = 4 if _onnx_type(src.inputs[0]) in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4) else 8
        elif src is not None and _onnx_type(src.inputs[0]) == onnx.TensorProto.FLOAT16:
            bits = 16
        out[node.name] = bits
    return out


# ----------------------------------------------------------------------------------------------
# strip: any QDQ / fp16-Cast graph -> float graph
# ----------------------------------------------------------------------------------------------


def _dq_parts(node: gs.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    x = np.asarray(node.inputs[0].values)
    scale = np.asarray(node.inputs[1].values, dtype=np.float32)
    zp = np.asarray(node.inputs[2].values) if len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant) else None
    return x, scale, zp


def _dequantize_const(node: gs.Node) -> np.ndarray:
    """Value of DequantizeLinear(constant x, constant scale[, constant zero point])."""
    x, scale, zp = _dq_parts(node)
    xf = x.astype(np.float32)
    zf = zp.astype(np.float32) if zp is not None else np.zeros_like(scale)
    if scale.size > 1:
        axis = int(node.attrs.get("axis", 1)) % x.ndim
        block = int(node.attrs.get("block_size", 0))
        if block > 0:  # blocked: scale has x's rank, ceil(D / block) entries on `axis`
            idx = np.arange(x.shape[axis]) // block
            scale = np.take(scale, idx, axis=axis)
            zf = np.take(zf, idx, axis=axis)
        else:
            scale = broadcast(scale, x.ndim, axis)
            zf = broadcast(zf, x.ndim, axis)
    return ((xf - zf) * scale).astype(np.float32)


def _recorded_weight(layer: gs.Node, dq: gs.Node) -> QuantizedWeight | None:
    """The integer weight behind a layer's DequantizeLinear, when it is per-channel symmetric
    on the layer's channel axis (the form `emit` writes)."""
    x, scale, zp = _dq_parts(dq)
    if x.ndim == 0 or int(dq.attrs.get("block_size", 0)) > 0 or (zp is not None and np.any(zp.astype(np.int64) != 0)):
        return None
    axis = weight_axis(layer, x.ndim)
    if scale.ndim != 1 or scale.shape[0] != x.shape[axis] or int(dq.attrs.get("axis", 1)) % x.ndim != axis:
        return None
    dtype = _onnx_type(dq.inputs[0])
    bits = 4 if dtype in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4) else 8
    if dtype not in (onnx.TensorProto.INT4, onnx.TensorProto.INT8):
        return None
    return QuantizedWeight(bits, x.astype(np.int8), scale, axis)


def _activation_params(q: gs.Node) -> ActivationParams | None:
    if len(q.inputs) < 3 or not all(isinstance(t, gs.Constant) for t in q.inputs[1:3]):
        return None
    scale, zp = np.asarray(q.inputs[1].values), np.asarray(q.inputs[2].values)
    if scale.size != 1 or zp.size != 1 or zp.dtype != np.uint8:
        return None
    return ActivationParams(float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0]))


def _replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new


def _fold_to_constant(node: gs.Node, values: np.ndarray) -> None:
    """Replaces a node that computes a constant by that constant, under the node's output name."""
    out = node.outputs[0]
    const = gs.Constant(out.name, values)
    out.name = out.name + "~folded"
    _replace_uses(out, const)
    node.outputs.clear()
    node.inputs.clear()


def strip(graph: gs.Graph) -> Stripped:
    """Turns `graph` (in place) into its float form and returns what it removed:

    - DequantizeLinear of constants becomes a float constant named like the DQ's output (the
      quantize pass names that output after the original weight, so names round-trip);
    - Cast(fp16 constant -> float) becomes a float constant;
    - QuantizeLinear -> DequantizeLinear on an activation is bypassed.
    """
    precisions = read_precisions(graph)
    weights: dict[str, QuantizedWeight] = {}
    for layer in graph.nodes:
        src = _weight_source(layer)
        if src is not None and src.op == "DequantizeLinear" and all(isinstance(t, gs.Constant) for t in src.inputs):
            record = _recorded_weight(layer, src)
            if record is not None:
                weights[layer.name] = record
    for node in list(graph.nodes):
        if not node.outputs or node.outputs[0] in graph.outputs:
            continue
        if node.op == "DequantizeLinear" and all(isinstance(t, gs.Constant) for t in node.inputs):
            _fold_to_constant(node, _dequantize_const(node))
        elif node.op == "Cast" and isinstance(node.inputs[0], gs.Constant) and int(node.attrs.get("to", 0)) == onnx.TensorProto.FLOAT:
            _fold_to_constant(node, np.asarray(node.inputs[0].values).astype(np.float32))
    activations: dict[str, ActivationParams] = {}
    for q in list(graph.nodes):
        if q.op != "QuantizeLinear" or not q.inputs or not isinstance(q.inputs[0], gs.Variable):
            continue
        src, q_out = q.inputs[0], q.outputs[0]
        dqs = list(q_out.outputs)
        if not dqs or any(c.op != "DequantizeLinear" for c in dqs) or q_out in graph.outputs:
            continue  # something reads the integer tensor itself: not a plain Q/DQ pair
        if any(dq.outputs[0] in graph.outputs for dq in dqs):
            continue
        params = _activation_params(q)
        if params is not None:
            activations[src.name] = params
        for dq in dqs:
            _replace_uses(dq.outputs[0], src)
            dq.outputs.clear()
            dq.inputs.clear()
        q.outputs.clear()
        q.inputs.clear()
    graph.cleanup()
    return Stripped(precisions, activations, weights)


def ensure_opset(graph: gs.Graph, opset: int) -> gs.Graph:
    """`graph` at main-domain opset >= `opset`, converted by onnx's version converter (op
    semantics that changed between opsets are rewritten, not just relabelled)."""
    if graph.opset >= opset:
        return graph
    model = gs.export_onnx(graph.copy(), do_type_check=False)
    try:
        converted = version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises plain RuntimeErrors with long messages
        raise ModelError(f"cannot upgrade the model from opset {graph.opset} to {opset} for int4 weights: {str(exc).splitlines()[0]}") from None
    out = gs.import_onnx(converted)
    out.ir_version = max(int(out.ir_version or 0), _IR_FOR_OPSET.get(opset, 10))
    return out


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------


def broadcast(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast along `axis` of an `ndim`-dimensional array."""
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def qmax(bits: int) -> int:
    return INT8_WEIGHT_MAX if bits == 8 else INT4_WEIGHT_MAX


def per_channel_scale(w: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Symmetric per-channel scale max|w| / qmax (1 for an all-zero channel)."""
    amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
    return (np.where(amax > 0, amax, float(qmax(bits))) / qmax(bits)).astype(np.float32)


def round_to_nearest(w: np.ndarray, bits: int, axis: int) -> QuantizedWeight:
    """Symmetric per-channel round-to-nearest: what onnxruntime's quantizer does for weights
    (int8 here; int4 layers use GPTQ when data is given, see `realize`)."""
    w = np.asarray(w, dtype=np.float32)
    scale = per_channel_scale(w, bits, axis)
    q = np.clip(np.round(w / broadcast(scale, w.ndim, axis)), -qmax(bits), qmax(bits)).astype(np.int8)
    return QuantizedWeight(bits, q, scale, axis)

