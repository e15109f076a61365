"""Mixed-precision QDQ rewriting: the mechanics behind the `quantize` pass.

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
      integers are chosen by GPTQ on calibration data (compiler/gptq.py): round-to-nearest int4
      loses 23 points of top-1 on the MLPerf Tiny ResNet-8, GPTQ under one.

Where activations are quantized (int8 only). The QDQ format places a Q->DQ pair on a tensor;
onnxruntime fuses `DQ -> op -> Q` into an integer kernel, so an int8 Conv needs Q/DQ on its
input *and* its output. The rules, written once in `plan_activations`:
- the *region* is the set of nodes that compute in int8: the int8 layers, the Relu/Clip right
  after one (fused: the Q goes after the activation, zero point 0, and onnxruntime drops the
  activation), and glue ops (Add, pools, Concat, data movement) whose inputs all come from the
  region (or get a Q/DQ pair anyway) and whose output leads to an int8 layer (so QLinearAdd / QLinearAveragePool run
  between int8 layers instead of dequantize -> float op -> quantize);
- a tensor gets a Q/DQ pair when a region node reads it, or when an int8 Conv (after its fused
  activation) produces it (the Conv fusion needs the output Q);
- data-movement ops (Reshape, Transpose, MaxPool, ...) reuse their input's scale, so
  onnxruntime runs them on uint8 without requantizing;
- when the producer computes in float, only region consumers read the dequantized tensor:
  layers left at fp32 see exactly the float values they saw before.
Keeping the Relu in the graph (rather than deleting it, as onnxruntime's quantizer does for
uint8) keeps the float meaning of the graph intact, so `strip` recovers the float graph (with
the rounded weights) from any quantized one.

`strip` turns any QDQ/Cast graph back into float (folding weight DequantizeLinear and fp16
Casts, dropping activation Q/DQ pairs) and returns the activation parameters and integer
weights it removed, so a later quantize step can re-emit the whole graph consistently without
calibrating or rounding again what did not change.

Calibration uses onnxruntime's calibrators (MinMax, Entropy, Percentile) through a
CalibrationDataReader, restricted to the tensors that get a Q/DQ pair, and onnxruntime's
`compute_scale_zp` for the uint8 parameters. The graph rewrite is ours rather than
`quantize_static`'s because (measured on this CPU, see bench/results/quantize.md) its defaults
(int8 activations) run 1.8x *slower* than fp32; it deletes Relus (so a quantized graph cannot
be turned back into its float form); it has no weight-only int4 for Conv and no fp16; and a
mixed map needs one consistent QDQ graph across several precisions. int8 weights are
round-to-nearest per channel, exactly as onnxruntime's quantizer computes them.

Bias correction: with calibration data, every newly quantized int8 / int4 layer gets its bias
shifted so that its mean output on the data matches the float layer's (compiler/gptq.py
`bias_shift`, from the same pass over the data as GPTQ). Measured on ResNet-8 (10k test
images): +0.3 top-1 for int4 convolutions, neutral for int8.

Order of work (`prepare` then `realize`): strip to float, plan the activation pairs, calibrate
only the tensors without known parameters, round only the weights without a known integer
form (and correct their biases), emit once. What a later quantize step can reuse (activation
parameters, integer weights) is reused, so repeated steps compose into one consistent graph and
repeating a step changes nothing.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper, version_converter

from onnxcompress.errors import ModelError

PRECISIONS = (32, 16, 8, 4)
LAYER_OPS = frozenset({"Conv", "Gemm", "MatMul"})
# "minmax" (the default): the global min and max over the calibration data; "mean_minmax": the mean
# over calibration samples of each sample's min and max, NNCF's default estimator for activations.
# minmax is the default because it is the more faithful to the float model (bench/results/quantize.md:
# top-1 agreement with fp32 on 9k held-out images, ResNet-8 98.2 % vs 96.6 %, SqueezeNet 98.5 % vs 96.3 %).
CALIBRATION_METHODS = ("minmax", "mean_minmax", "entropy", "percentile")
DEFAULT_CALIBRATION = "minmax"
INT4_MIN_OPSET = 21  # DequantizeLinear on int4 tensors
QDQ_MIN_OPSET = 13  # per-axis QuantizeLinear / DequantizeLinear

# ops that move or select values without computing new ones: their output reuses the input's
# quantization parameters (onnxruntime runs them on uint8 directly)
_DATA_MOVEMENT = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool"})
# ops with an int8 kernel in onnxruntime that compute new values (need their own output scale)
_INT8_GLUE = frozenset({"Add", "AveragePool", "GlobalAveragePool", "Concat"})

_INT8_WEIGHT_MAX = 127  # symmetric int8 weights use [-127, 127] (zero point 0)
_INT4_WEIGHT_MAX = 7  # symmetric int4 weights use [-7, 7]
_INT32_MAX = 2**31 - 1
_IR_FOR_OPSET = {21: 10, 22: 10, 23: 11}  # the IR version an opset needs (onnx.helper.VERSION_TABLE)
_MAX_ORT_IR = 10  # onnxruntime 1.31 reads IR <= 13; 10 is the lowest that carries int4
_CALIBRATION_BATCH = 32


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
class ActivationPlan:
    """Where the int8 layers of a graph need Q/DQ pairs (see the module docstring).

    region: nodes that compute in int8.
    tensors: tensors that get a Q/DQ pair, in topological order.
    inherits: tensor -> tensor whose parameters it reuses (outputs of data movement).
    """

    region: frozenset[str]
    tensors: tuple[str, ...]
    inherits: Mapping[str, str]

    @property
    def calibrated(self) -> tuple[str, ...]:
        """Tensors that need a measured range (the others inherit one)."""
        return tuple(t for t in self.tensors if t not in self.inherits)


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


@dataclass(frozen=True)
class Work:
    """What realising a precision map on a float graph involves, known before any numerics.

    to_calibrate: activation tensors without known parameters (need data: int8).
    to_round: int4 layers without a known integer weight (need data: GPTQ).
    """

    plan: ActivationPlan
    to_calibrate: tuple[str, ...]
    to_round: tuple[str, ...]

    @property
    def needs_data(self) -> bool:
        return bool(self.to_calibrate or self.to_round)


class _Names:
    """Short unique names for the tensors and nodes the rewrite adds (long names cost file bytes:
    a QDQ graph has five new names per quantized tensor)."""

    def __init__(self, graph: gs.Graph) -> None:
        self._used = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
        self._count = 0

    def new(self, prefix: str) -> str:
        while True:
            name = f"{prefix}{self._count}"
            self._count += 1
            if name not in self._used:
                self._used.add(name)
                return name


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


def _producer(t: gs.Tensor) -> gs.Node | None:
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
    src = _producer(node.inputs[1])
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
            scale = _broadcast(scale, x.ndim, axis)
            zf = _broadcast(zf, x.ndim, axis)
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
# where activations are quantized
# ----------------------------------------------------------------------------------------------


def _float_inputs(node: gs.Node) -> list[gs.Variable]:
    """The activation inputs of a node (variables; shape tensors of Reshape excluded)."""
    ins = [t for t in node.inputs if isinstance(t, gs.Variable)]
    if node.op in ("Reshape", "Squeeze", "Unsqueeze"):
        ins = ins[:1]
    return ins


def _is_fused_activation(node: gs.Node) -> bool:
    if node.op == "Relu":
        return True
    if node.op == "Clip":  # Clip(min=0, max) is a bounded Relu
        lo = node.inputs[1] if len(node.inputs) > 1 else None
        return isinstance(lo, gs.Constant) and float(np.asarray(lo.values)) == 0.0
    return False


def _post_activation(node: gs.Node, graph: gs.Graph) -> tuple[gs.Tensor, gs.Node | None]:
    """A layer's output tensor, or that of the Relu/Clip that alone consumes it (fused)."""
    out = node.outputs[0]
    if len(out.outputs) == 1 and out not in graph.outputs and _is_fused_activation(out.outputs[0]):
        act = out.outputs[0]
        return act.outputs[0], act
    return out, None


def _quantized_anyway(t: gs.Tensor, candidate: set[str], int8: set[str]) -> bool:
    """A tensor produced in int8, or read by an int8 layer (so it gets a Q/DQ pair anyway)."""
    src = _producer(t)
    return (src is not None and src.name in candidate) or any(c.name in int8 for c in t.outputs)


def plan_activations(graph: gs.Graph, int8_layers: Sequence[str] | frozenset[str]) -> ActivationPlan:
    """Which tensors get a Q/DQ pair so that onnxruntime fuses the int8 layers (rules: module
    docstring). `graph` must be in float form (after `strip`); it gets topologically sorted."""
    int8 = set(int8_layers)
    graph.toposort()
    nodes = list(graph.nodes)

    # forward: glue ops and activations whose float inputs all come from candidate nodes
    candidate: set[str] = set(int8)
    for node in nodes:
        if node.name in candidate or not (node.op in _INT8_GLUE or node.op in _DATA_MOVEMENT or _is_fused_activation(node)):
            continue
        ins = _float_inputs(node)
        if ins and all(_quantized_anyway(t, candidate, int8) for t in ins):
            candidate.add(node.name)

    # backward: keep a candidate only if its output leads to an int8 layer through kept nodes;
    # the activation right after an int8 layer is always kept (the layer's fusion needs it)
    kept: set[str] = set(int8)
    for node in reversed(nodes):
        if node.name in kept or node.name not in candidate or any(t in graph.outputs for t in node.outputs):
            continue
        src = _producer(node.inputs[0]) if node.inputs else None
        after_layer = _is_fused_activation(node) and src is not None and src.name in int8
        if after_layer or any(c.name in kept for t in node.outputs for c in t.outputs):
            kept.add(node.name)
    region = frozenset(kept)

    # an activation that alone consumes a kept compute node's output fuses into it: the Q goes
    # after the activation (onnxruntime's selectors treat it as a redundant clip)
    fused: set[str] = set()
    for node in nodes:
        if node.name in region and (node.name in int8 or node.op in _INT8_GLUE):
            out, act = _post_activation(node, graph)
            if act is not None and act.name in region:
                fused.add(act.name)

    tensors: list[str] = []
    seen: set[str] = set()

    def add(t: gs.Tensor) -> None:
        if isinstance(t, gs.Variable) and t.name not in seen:
            seen.add(t.name)
            tensors.append(t.name)

    for node in nodes:
        if node.name not in region or node.name in fused:
            continue
        for t in _float_inputs(node):
            add(t)
        if node.name in int8 and node.op == "Conv":
            out, act = _post_activation(node, graph)
            if act is None or act.name in fused:
                if out not in graph.outputs:
                    add(out)
            elif node.outputs[0] not in graph.outputs:
                add(node.outputs[0])
    by_name = graph.tensors()
    inherits: dict[str, str] = {}
    for name in tensors:
        src = _producer(by_name[name])
        if src is not None and src.name in region and src.op in _DATA_MOVEMENT:
            origin = _float_inputs(src)[0].name
            inherits[name] = inherits.get(origin, origin)
    return ActivationPlan(region, tuple(tensors), inherits)


# ----------------------------------------------------------------------------------------------
# calibration (onnxruntime's calibrators)
# ----------------------------------------------------------------------------------------------


class _ArrayReader:
    """onnxruntime CalibrationDataReader over an in-memory array of preprocessed inputs."""

    def __init__(self, input_name: str, data: np.ndarray, batch_size: int) -> None:
        self._batches = iter([{input_name: np.ascontiguousarray(data[i : i + batch_size])} for i in range(0, len(data), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _restricted(base: type, tensors: frozenset[str]) -> type:
    """An onnxruntime calibrator class that only records `tensors` (its default records every
    float tensor of the graph, which costs memory for the histogram methods)."""

    class Restricted(base):  # type: ignore[misc, valid-type]
        def select_tensors_to_calibrate(self, model):  # noqa: ANN001 - onnxruntime's signature
            selected, value_infos = super().select_tensors_to_calibrate(model)
            return selected & tensors, value_infos

    return Restricted


def calibrate(
    model: onnx.ModelProto, tensors: Sequence[str], data: np.ndarray, method: str = DEFAULT_CALIBRATION, batch_size: int = 32
) -> dict[str, tuple[float, float]]:
    """tensor name -> (min, max) range measured by onnxruntime's calibrator `method` on `data`
    (preprocessed model inputs, N first).

    "mean_minmax" averages the per-sample extremes instead of taking the global ones: one outlier
    image no longer stretches a tensor's range, so the bulk of its values gets finer steps and the
    rest is clipped. It follows the float model less closely than "minmax" but can score higher
    (MLPerf ResNet-8 on JPEG CIFAR-10: +0.3 top-1; SqueezeNet: -0.2; bench/results/quantize.md).
    onnxruntime's MinMaxCalibrater computes exactly
    this with `moving_average=True` when every batch of one `collect_data` call is one sample (it
    takes the nanmean of the per-batch ReduceMin / ReduceMax), so no new statistics code is needed."""
    from onnxruntime.quantization.calibrate import EntropyCalibrater, MinMaxCalibrater, PercentileCalibrater

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}")
    if not tensors:
        return {}
    base = {"mean_minmax": MinMaxCalibrater, "minmax": MinMaxCalibrater, "entropy": EntropyCalibrater, "percentile": PercentileCalibrater}[method]
    options = {"moving_average": True} if method == "mean_minmax" else {}
    wanted = frozenset(tensors)
    input_name = next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    with tempfile.TemporaryDirectory(prefix="onnxcompress-calib-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(model, path)
        calibrator = _restricted(base, wanted)(path, augmented_model_path=os.path.join(tmp, "augmented.onnx"), **options)
        # the histogram calibrators print progress to stdout; a CLI's stdout is not theirs
        with contextlib.redirect_stdout(io.StringIO()):
            calibrator.augment_graph()
            calibrator.create_inference_session()
            if method == "mean_minmax":
                calibrator.collect_data(_ArrayReader(input_name, data, 1))  # one call, one sample per batch
            else:
                # one batch per call: onnxruntime's histogram collector stacks the batches of one call
                # with np.asarray and fails when the last batch is shorter
                for i in range(0, len(data), batch_size):
                    calibrator.collect_data(_ArrayReader(input_name, data[i : i + batch_size], batch_size))
            result = calibrator.compute_data()
    ranges: dict[str, tuple[float, float]] = {}
    for name in wanted:
        if name in result:
            lo, hi = result[name].range_value
            ranges[name] = (float(np.min(lo)), float(np.max(hi)))
    return ranges


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------


def _broadcast(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def _qmax(bits: int) -> int:
    return _INT8_WEIGHT_MAX if bits == 8 else _INT4_WEIGHT_MAX


def per_channel_scale(w: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Symmetric per-channel scale max|w| / qmax (1 for an all-zero channel)."""
    amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
    return (np.where(amax > 0, amax, float(_qmax(bits))) / _qmax(bits)).astype(np.float32)


def round_to_nearest(w: np.ndarray, bits: int, axis: int) -> QuantizedWeight:
    """Symmetric per-channel round-to-nearest: what onnxruntime's quantizer does for weights
    (int8 here; int4 layers use GPTQ when data is given, see `realize`)."""
    w = np.asarray(w, dtype=np.float32)
    scale = per_channel_scale(w, bits, axis)
    q = np.clip(np.round(w / _broadcast(scale, w.ndim, axis)), -_qmax(bits), _qmax(bits)).astype(np.int8)
    return QuantizedWeight(bits, q, scale, axis)


def _int4_constant(name: str, q: np.ndarray) -> gs.Constant:
    """An int4 constant stored packed (two values a byte). onnx-graphsurgeon 0.6 cannot export an
    int4 array it holds in memory, so the constant keeps its TensorProto (LazyValues)."""
    proto = numpy_helper.from_array(q.astype(ml_dtypes.int4), name)
    return gs.Constant(name, gs.ir.tensor.LazyValues(proto))


# ----------------------------------------------------------------------------------------------
# emit: float graph + precisions -> QDQ graph
# ----------------------------------------------------------------------------------------------


def _detach_constant(names: _Names, c: gs.Constant) -> str:
    """Frees a constant's name for the tensor that replaces it; returns the name."""
    name = c.name
    c.name = names.new(name + "~")
    return name


def _emit_weight(node: gs.Node, bits: int, weight: QuantizedWeight | None, names: _Names, x_scale: float | None) -> list[gs.Node]:
    """Puts the layer's weight (and, for int8, its bias) behind the nodes that store it in `bits`;
    returns those nodes. The float tensor the layer reads keeps the weight's original name."""
    w_const = node.inputs[1]
    assert isinstance(w_const, gs.Constant)
    w = np.asarray(w_const.values, dtype=np.float32)
    w_out = gs.Variable(_detach_constant(names, w_const), dtype=np.float32, shape=list(w.shape))
    node.inputs[1] = w_out
    if bits == 16:
        w16 = gs.Constant(names.new("h"), w.astype(np.float16))
        return [gs.Node("Cast", names.new("cast"), attrs={"to": onnx.TensorProto.FLOAT}, inputs=[w16], outputs=[w_out])]
    assert weight is not None and weight.bits == bits
    q, scale, axis = weight.q, weight.scale, weight.axis
    added: list[gs.Node] = []
    bias = node.inputs[2] if node.op in ("Conv", "Gemm") and len(node.inputs) > 2 else None
    if (
        bits == 8
        and x_scale is not None
        and isinstance(bias, gs.Constant)
        and np.asarray(bias.values).shape == scale.shape
        and float(node.attrs.get("alpha", 1.0)) == 1.0
        and float(node.attrs.get("beta", 1.0)) == 1.0
    ):
        # int32 bias at scale x_scale * w_scale (what the integer kernels accumulate in); like
        # onnxruntime's quantizer, widen a channel's weight scale when its bias would overflow
        b = np.asarray(bias.values, dtype=np.float64)
        need = (np.abs(b) / (x_scale * _INT32_MAX)).astype(np.float32)
        if np.any(need > scale):
            real = q.astype(np.float32) * _broadcast(scale, q.ndim, axis)
            scale = np.maximum(scale, need)
            q = np.clip(np.round(real / _broadcast(scale, q.ndim, axis)), -_INT8_WEIGHT_MAX, _INT8_WEIGHT_MAX).astype(np.int8)
        b_scale = (x_scale * scale.astype(np.float64)).astype(np.float32)
        qb = np.clip(np.round(b / b_scale), -_INT32_MAX, _INT32_MAX).astype(np.int32)
        b_out = gs.Variable(_detach_constant(names, bias), dtype=np.float32, shape=[int(b.shape[0])])
        node.inputs[2] = b_out
        added.append(
            gs.Node(
                "DequantizeLinear",
                names.new("dq"),
                attrs={"axis": 0},
                inputs=[gs.Constant(names.new("b"), qb), gs.Constant(names.new("bs"), b_scale)],
                outputs=[b_out],
            )
        )
    if bits == 8:
        # an explicit zero point: onnxruntime fuses QGemm only with it, and takes QLinearConv's
        # fast symmetric path (MlasConvSym) only when it can read that it is zero
        stored = [gs.Constant(names.new("w"), q), gs.Constant(names.new("ws"), scale), gs.Constant(names.new("wz"), np.zeros(scale.shape, np.int8))]
    else:
        stored = [_int4_constant(names.new("w"), q), gs.Constant(names.new("ws"), scale)]
    added.append(gs.Node("DequantizeLinear", names.new("dq"), attrs={"axis": axis}, inputs=stored, outputs=[w_out]))
    return added


def emit(
    graph: gs.Graph,
    precisions: Mapping[str, int],
    plan: ActivationPlan,
    activations: Mapping[str, ActivationParams],
    weights: Mapping[str, QuantizedWeight],
) -> gs.Graph:
    """Rewrites the float `graph` (in place) to the given per-layer precisions. `plan` must come
    from `plan_activations` for the int8 layers, `activations` must cover `plan.calibrated` and
    `weights` every int8 / int4 layer. Writes no numerics of its own."""
    names = _Names(graph)
    by_name = graph.tensors()
    new_nodes: list[gs.Node] = []
    scale_of_dq: dict[str, float] = {}  # dequantized activation -> its scale (for int32 biases)

    # activations: one Q/DQ pair per tensor, shared by the consumers that read it
    for tname in plan.tensors:
        t = by_name[tname]
        p = activations[plan.inherits.get(tname, tname)]
        scale = gs.Constant(names.new("s"), np.array(p.scale, dtype=np.float32))
        zp = gs.Constant(names.new("z"), np.array(p.zero_point, dtype=np.uint8))
        q_out = gs.Variable(names.new("q"), dtype=np.uint8, shape=t.shape)
        dq_out = gs.Variable(names.new("d"), dtype=np.float32, shape=t.shape)
        src = _producer(t)
        from_region = src is not None and src.name in plan.region
        readers = [c for c in t.outputs if from_region or c.name in plan.region]
        new_nodes.append(gs.Node("QuantizeLinear", names.new("Q"), inputs=[t, scale, zp], outputs=[q_out]))
        new_nodes.append(gs.Node("DequantizeLinear", names.new("DQ"), inputs=[q_out, scale, zp], outputs=[dq_out]))
        scale_of_dq[dq_out.name] = p.scale
        for c in readers:
            for i, inp in enumerate(c.inputs):
                if inp is t:
                    c.inputs[i] = dq_out

    for node in list(graph.nodes):
        bits = precisions.get(node.name, 32)
        if bits == 32 or node.op not in LAYER_OPS or len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
            continue
        x_scale = scale_of_dq.get(node.inputs[0].name) if bits == 8 else None
        new_nodes.extend(_emit_weight(node, bits, weights.get(node.name), names, x_scale))
    graph.nodes.extend(new_nodes)
    graph.cleanup().toposort()
    return graph


# ----------------------------------------------------------------------------------------------
# the one place that realises a precision map
# ----------------------------------------------------------------------------------------------


def _layers(graph: gs.Graph) -> dict[str, gs.Node]:
    return {n.name: n for n in graph.nodes if n.op in LAYER_OPS}


def prepare(graph: gs.Graph, precisions: Mapping[str, int], previous: Stripped | None = None) -> Work:
    """What realising `precisions` on the float `graph` needs (before any data is touched).
    Parameters and integer weights recorded in `previous` are reused as they are."""
    previous = previous or Stripped()
    layers = _layers(graph)
    plan = plan_activations(graph, frozenset(n for n, b in precisions.items() if b == 8))
    to_calibrate = tuple(t for t in plan.calibrated if t not in previous.activations)
    to_round = tuple(
        n
        for n, b in precisions.items()
        if b == 4 and not _reusable(previous.weights.get(n), 4, layers[n])
    )
    return Work(plan, to_calibrate, to_round)


def _reusable(record: QuantizedWeight | None, bits: int, layer: gs.Node) -> bool:
    return record is not None and record.bits == bits and record.q.shape == tuple(layer.inputs[1].shape)


def _float_model(graph: gs.Graph) -> onnx.ModelProto:
    model = gs.export_onnx(graph.copy(), do_type_check=False)
    model.ir_version = min(max(int(graph.ir_version or 7), 7), _MAX_ORT_IR)
    return model


def _input_name(model: onnx.ModelProto) -> str:
    inits = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def _calibrated_weights(
    graph: gs.Graph,
    bits_of: Mapping[str, int],
    plan: ActivationPlan,
    activations: Mapping[str, ActivationParams],
    data: np.ndarray,
    seed: int,
) -> tuple[dict[str, QuantizedWeight], dict[str, np.ndarray]]:
    """Integer weights for newly quantized layers (int8: nearest; int4: GPTQ) and the bias
    shift that corrects each one's mean output, from one pass of the float model over `data`.
    Grouped convolutions get nearest rounding and no correction (per-group statistics: not
    written)."""
    from onnxcompress.compiler import gptq
    from onnxcompress.compiler.runtime import make_session, with_outputs

    nodes = _layers(graph)
    weights: dict[str, QuantizedWeight] = {}
    stats: dict[str, gptq.LayerInputs] = {}
    for name, bits in bits_of.items():
        node = nodes[name]
        if not gptq.supports_statistics(node):
            w = np.asarray(node.inputs[1].values, dtype=np.float32)
            weights[name] = round_to_nearest(w, bits, weight_axis(node, w.ndim))
            continue
        x = node.inputs[0].name
        quant = None
        if bits == 8 and x in plan.tensors:
            p = activations[plan.inherits.get(x, x)]
            quant = (p.scale, p.zero_point)
        stats[name] = gptq.LayerInputs(node, hessian=bits == 4, input_quant=quant, seed=seed)
    shifts: dict[str, np.ndarray] = {}
    if not stats:
        return weights, shifts
    model = _float_model(graph)
    wanted = sorted({nodes[n].inputs[0].name for n in stats})
    session = make_session(with_outputs(model, wanted), optimize=False)
    in_name = _input_name(model)
    for i in range(0, len(data), _CALIBRATION_BATCH):
        values = dict(zip(wanted, session.run(wanted, {in_name: data[i : i + _CALIBRATION_BATCH]})))
        for name, acc in stats.items():
            acc.add(values[nodes[name].inputs[0].name])
    for name, acc in stats.items():
        node, bits = nodes[name], bits_of[name]
        w = np.asarray(node.inputs[1].values, dtype=np.float32)
        axis = weight_axis(node, w.ndim)
        if bits == 4:
            scale = per_channel_scale(w, 4, axis)
            q_rows = gptq.gptq_round(gptq.weight_rows(node, w), acc.hessian, scale, _INT4_WEIGHT_MAX)
            weights[name] = QuantizedWeight(4, gptq.rows_to_weight(node, q_rows, w.shape), scale, axis)
        else:
            weights[name] = round_to_nearest(w, 8, axis)
        record = weights[name]
        real = record.q.astype(np.float32) * _broadcast(record.scale, w.ndim, axis)
        shifts[name] = gptq.bias_shift(gptq.weight_rows(node, w), gptq.weight_rows(node, real), acc)
    return weights, shifts


def _shift_bias(node: gs.Node, shift: np.ndarray) -> None:
    """Adds `shift` to a Conv / Gemm bias, creating the bias when the layer has none. A MatMul
    has no bias input: it keeps its shift (an Add node would cost more than it saves)."""
    if node.op not in ("Conv", "Gemm"):
        return
    if len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant):
        bias = node.inputs[2]
        values = np.asarray(bias.values, dtype=np.float32)
        if values.shape != shift.shape or float(node.attrs.get("beta", 1.0)) != 1.0:
            return
        bias.values = (values + shift).astype(np.float32)
    elif len(node.inputs) == 2:
        node.inputs.append(gs.Constant(node.name + "_bias", shift.astype(np.float32)))


def realize(
    graph: gs.Graph,
    precisions: Mapping[str, int],
    work: Work,
    previous: Stripped | None = None,
    data: np.ndarray | None = None,
    method: str = DEFAULT_CALIBRATION,
    seed: int = 0,
) -> gs.Graph:
    """Emits `precisions` on the float `graph` (in place; int4 needs opset >= 21, see
    `ensure_opset`). `data` (preprocessed inputs) is required when `work.needs_data`."""
    previous = previous or Stripped()
    if work.needs_data and data is None:
        raise ValueError("realising this precision map needs calibration data")
    layers = _layers(graph)
    activations = {t: p for t, p in previous.activations.items() if t in set(work.plan.calibrated)}
    if work.to_calibrate:
        ranges = calibrate(_float_model(graph), work.to_calibrate, data, method)
        missing = [t for t in work.to_calibrate if t not in ranges]
        if missing:
            raise ValueError(f"the calibrator measured no range for {missing[:3]}")
        activations.update({t: ActivationParams.from_range(*ranges[t]) for t in work.to_calibrate})
    weights: dict[str, QuantizedWeight] = {}
    fresh: dict[str, int] = {}  # layers quantized now (not reused from an earlier step)
    for name, bits in precisions.items():
        if bits not in (4, 8):
            continue
        record = previous.weights.get(name)
        if _reusable(record, bits, layers[name]):
            weights[name] = record
        else:
            fresh[name] = bits
    if fresh and data is not None:
        computed, shifts = _calibrated_weights(graph, fresh, work.plan, activations, data, seed)
        weights.update(computed)
        for name, shift in shifts.items():
            _shift_bias(layers[name], shift)
    else:  # only int8 layers whose activations all have known parameters get here without data
        for name, bits in fresh.items():
            w = np.asarray(layers[name].inputs[1].values, dtype=np.float32)
            weights[name] = round_to_nearest(w, bits, weight_axis(layers[name], w.ndim))
    return emit(graph, precisions, work.plan, activations, weights)
