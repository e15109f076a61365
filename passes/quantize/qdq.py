"""Mixed-precision QDQ rewriting: the top of the quantize pass's mechanics. It realises a
precision map (layer -> 32 / 16 / 8 / 4 bits, the forms of forms.py) on a float graph, with the
activation pairs of activations.py.

Bias correction: with calibration data, every newly quantized int8 / int4 layer gets its bias
shifted so that its mean output on the data matches the float layer's (gptq.py
`bias_shift`, from the same pass over the data as GPTQ). Measured on ResNet-8 (10k test
images): +0.3 top-1 for int4 convolutions, neutral for int8.

Order of work (`prepare` then `realize`): strip to float, plan the activation pairs, calibrate
only the tensors without known parameters, round only the weights without a known integer
form (and correct their biases), emit once. What a later quantize step can reuse (activation
parameters, integer weights) is reused, so repeated steps compose into one consistent graph and
repeating a step changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from onnxcompress.compiler.ops import BIAS_INPUT_OPS
from onnxcompress.passes.quantize.activations import DEFAULT_CALIBRATION, ActivationPlan, calibrate, plan_activations
from onnxcompress.passes.quantize.forms import (
    INT4_WEIGHT_MAX,
    INT8_WEIGHT_MAX,
    LAYER_OPS,
    ActivationParams,
    QuantizedWeight,
    Stripped,
    broadcast,
    per_channel_scale,
    producer,
    round_to_nearest,
    weight_axis,
)

_INT32_MAX = 2**31 - 1
_MAX_ORT_IR = 10  # onnxruntime 1.31 reads IR <= 13; 10 is the lowest that carries int4
_CALIBRATION_BATCH = 32


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
    bias = node.inputs[2] if node.op in BIAS_INPUT_OPS and len(node.inputs) > 2 else None
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
            real = q.astype(np.float32) * broadcast(scale, q.ndim, axis)
            scale = np.maximum(scale, need)
            q = np.clip(np.round(real / broadcast(scale, q.ndim, axis)), -INT8_WEIGHT_MAX, INT8_WEIGHT_MAX).astype(np.int8)
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
        src = producer(t)
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
    from onnxcompress.passes.quantize import gptq
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
            q_rows = gptq.gptq_round(gptq.weight_rows(node, w), acc.hessian, scale, INT4_WEIGHT_MAX)
            weights[name] = QuantizedWeight(4, gptq.rows_to_weight(node, q_rows, w.shape), scale, axis)
        else:
            weights[name] = round_to_nearest(w, 8, axis)
        record = weights[name]
        real = record.q.astype(np.float32) * broadcast(record.scale, w.ndim, axis)
        shifts[name] = gptq.bias_shift(gptq.weight_rows(node, w), gptq.weight_rows(node, real), acc)
    return weights, shifts


def _shift_bias(node: gs.Node, shift: np.ndarray) -> None:
    """Adds `shift` to a Conv / Gemm bias, creating the bias when the layer has none. A MatMul
    has no bias input: it keeps its shift (an Add node would cost more than it saves)."""
    if node.op not in BIAS_INPUT_OPS:
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