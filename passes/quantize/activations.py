"""Where the activations of int8 layers get Q/DQ pairs, and their calibration: the middle of
the quantize pass's mechanics (forms.py below, qdq.py above).

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

Calibration uses onnxruntime's calibrators (MinMax, Entropy, Percentile) through a
CalibrationDataReader, restricted to the tensors that get a Q/DQ pair, and onnxruntime's
`compute_scale_zp` for the uint8 parameters. The graph rewrite is ours rather than
`quantize_static`'s because (measured on this CPU, see bench/results/quantize.md) its defaults
(int8 activations) run 1.8x *slower* than fp32; it deletes Relus (so a quantized graph cannot
be turned back into its float form); it has no weight-only int4 for Conv and no fp16; and a
mixed map needs one consistent QDQ graph across several precisions. int8 weights are
round-to-nearest per channel, exactly as onnxruntime's quantizer computes them.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

# INT8_GLUE_OPS compute new values with an int8 kernel in onnxruntime (they need their own output
# scale); INT8_DATA_MOVEMENT_OPS move or select values, so their output reuses the input's
# quantization parameters (onnxruntime runs them on uint8 directly)
from onnxcompress.compiler.ops import INT8_DATA_MOVEMENT_OPS, INT8_GLUE_OPS, SHAPE_INPUT_OPS
from onnxcompress.passes.quantize.forms import producer

# "minmax" (the default): the global min and max over the calibration data; "mean_minmax": the mean
# over calibration samples of each sample's min and max, NNCF's default estimator for activations.
# minmax is the default because it is the more faithful to the float model (bench/results/quantize.md:
# top-1 agreement with fp32 on 9k held-out images, ResNet-8 98.2 % vs 96.6 %, SqueezeNet 98.5 % vs 96.3 %).
CALIBRATION_METHODS = ("minmax", "mean_minmax", "entropy", "percentile")
DEFAULT_CALIBRATION = "minmax"


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



# ----------------------------------------------------------------------------------------------
# where activations are quantized
# ----------------------------------------------------------------------------------------------


def _float_inputs(node: gs.Node) -> list[gs.Variable]:
    """The activation inputs of a node (variables; shape tensors of Reshape excluded)."""
    ins = [t for t in node.inputs if isinstance(t, gs.Variable)]
    if node.op in SHAPE_INPUT_OPS:
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
    src = producer(t)
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
        if node.name in candidate or not (node.op in INT8_GLUE_OPS or node.op in INT8_DATA_MOVEMENT_OPS or _is_fused_activation(node)):
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
        src = producer(node.inputs[0]) if node.inputs else None
        after_layer = _is_fused_activation(node) and src is not None and src.name in int8
        if after_layer or any(c.name in kept for t in node.outputs for c in t.outputs):
            kept.add(node.name)
    region = frozenset(kept)

    # an activation that alone consumes a kept compute node's output fuses into it: the Q goes
    # after the activation (onnxruntime's selectors treat it as a redundant clip)
    fused: set[str] = set()
    for node in nodes:
        if node.name in region and (node.name in int8 or node.op in INT8_GLUE_OPS):
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
        src = producer(by_name[name])
        if src is not None and src.name in region and src.op in INT8_DATA_MOVEMENT_OPS:
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

