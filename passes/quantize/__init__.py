"""quantize: store layers in fewer bits (mixed precision, standard QDQ).

Plan forms:
  {"pass": "quantize", "bits": 8}                              every quantizable layer
  {"pass": "quantize", "node": "conv_5", "bits": 4}            one layer
  {"pass": "quantize", "nodes": {"conv_1": 8, "conv_2": 4}}    per-layer map (what HAQ emits)
Option: "calibration": "minmax" (default: global extremes) | "mean_minmax" (the mean of per-sample
extremes, NNCF's default) | "entropy" | "percentile" - how int8 activation ranges are measured
(onnxruntime's calibrators).

Precisions (forms.py has the why of each form): 32 leaves a layer untouched; 16 stores
its weight in fp16 behind a Cast; 8 is int8 QDQ (per-channel symmetric weights, per-tensor
uint8 activations, calibrated: onnxruntime runs it on its fused int8 kernels); 4 is int4
weight-only behind DequantizeLinear, rounded by GPTQ, and upgrades the model to opset 21.
int8 and int4 need calibration data (`ctx.calibration`); without it the step is a PlanError.

How steps compose: the graph itself records each layer's precision (the form of its weight),
so a step reads the current precisions, turns the graph back into float (`forms.strip`, which
keeps the activation scales and integer weights it removes), lays its own request over the
current map (a later step wins for the layers it names) and emits the whole map once: one
consistent QDQ graph, one Q/DQ pair per tensor, however many steps. Layers whose precision did
not change keep exactly their integers and scales, and existing activation pairs keep their
parameters (so repeating a step changes nothing). A layer a later step quantizes is quantized
from the graph's current float form, in which earlier layers already carry their rounded
weights; split steps therefore give the same graph structure as one map step and nearly the
same numbers. Precision lost by an earlier step is not restored: setting an int4 layer back to
8 or 32 keeps its int4-rounded values. Quantize last (after pruning, removal and
subset_classes): those passes read float weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnxcompress.passes.quantize import activations, forms, qdq
from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.errors import PlanError
from onnxcompress.passes.plan import parse_fields
from onnxcompress.passes.registry import PassContext, register

# calibration samples used at most (a random subset, seeded): ranges and GPTQ Hessians settle
# within a few hundred images, and histogram calibrators hold every sample in memory
MAX_CALIBRATION_SAMPLES = 512


def _bits(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in forms.PRECISIONS:
        raise PlanError(f"quantize: {where} must be one of {', '.join(map(str, forms.PRECISIONS))} bits, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class QuantizeParams:
    """bits: precision of every quantizable layer (when `nodes` is None).
    nodes: (layer, bits) pairs; `single` remembers the one-layer "node" form for to_json."""

    bits: int | None = None
    nodes: tuple[tuple[str, int], ...] | None = None
    calibration: str = activations.DEFAULT_CALIBRATION
    single: bool = False

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "QuantizeParams":
        f = parse_fields(obj, "quantize", {"bits": int, "node": str, "nodes": dict, "calibration": str})
        calibration = f.get("calibration", activations.DEFAULT_CALIBRATION)
        if calibration not in activations.CALIBRATION_METHODS:
            raise PlanError(f"quantize: unknown calibration '{calibration}'; choose one of {', '.join(activations.CALIBRATION_METHODS)}")
        if "nodes" in f:
            if "bits" in f or "node" in f:
                raise PlanError('quantize takes either "nodes": {layer: bits} or "bits" (with an optional "node"), not both')
            if not f["nodes"]:
                raise PlanError('quantize "nodes" must map at least one layer to its bits')
            pairs = tuple(sorted((str(k), _bits(v, f"nodes[{k!r}]")) for k, v in f["nodes"].items()))
            return cls(nodes=pairs, calibration=calibration)
        if "bits" not in f:
            raise PlanError('quantize needs "bits" (every layer, or one "node") or "nodes": {layer: bits}')
        bits = _bits(f["bits"], '"bits"')
        if "node" in f:
            return cls(nodes=((f["node"], bits),), calibration=calibration, single=True)
        return cls(bits=bits, calibration=calibration)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any]
        if self.nodes is None:
            out = {"bits": self.bits}
        elif self.single:
            out = {"node": self.nodes[0][0], "bits": self.nodes[0][1]}
        else:
            out = {"nodes": dict(self.nodes)}
        if self.calibration != activations.DEFAULT_CALIBRATION:
            out["calibration"] = self.calibration
        return out

    def requested(self, graph: gs.Graph, quantizable: tuple[str, ...]) -> dict[str, int]:
        """layer -> bits this step asks for, checked against the graph."""
        if self.nodes is None:
            return {n: int(self.bits) for n in quantizable}  # type: ignore[arg-type]
        ops = {n.name: n.op for n in graph.nodes}
        for name, _ in self.nodes:
            if name not in ops:
                shown = ", ".join(quantizable[:8]) + (" ..." if len(quantizable) > 8 else "")
                raise PlanError(f"quantize: no node named '{name}' in the model; quantizable layers: {shown}")
            if name not in quantizable:
                raise PlanError(f"quantize: node '{name}' ({ops[name]}) has no constant weight to quantize; see `onnxcompress inspect` for the quantizable layers")
        return dict(self.nodes)


def _calibration_subset(data: np.ndarray | None, seed: int) -> np.ndarray | None:
    if data is None:
        return None
    x = np.asarray(data, dtype=np.float32)
    if len(x) > MAX_CALIBRATION_SAMPLES:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), MAX_CALIBRATION_SAMPLES, replace=False))
        x = x[keep]
    return np.ascontiguousarray(x)


def quantize(graph: gs.Graph, params: QuantizeParams, ctx: PassContext) -> gs.Graph:
    stripped = forms.strip(graph)
    quantizable = analyze(graph).quantizable
    requested = params.requested(graph, quantizable)
    merged = {**stripped.precisions, **requested}
    precisions = {n: b for n, b in merged.items() if b != 32 and n in quantizable}
    if any(b == 4 for b in precisions.values()):
        graph = forms.ensure_opset(graph, forms.INT4_MIN_OPSET)
    elif any(b == 8 for b in precisions.values()):
        graph = forms.ensure_opset(graph, forms.QDQ_MIN_OPSET)  # per-axis DequantizeLinear (canonical models have it)
    work = qdq.prepare(graph, precisions, stripped)
    data = _calibration_subset(ctx.calibration, ctx.seed)
    if data is None and work.to_calibrate:
        raise PlanError("quantize to int8 needs calibration data: pass --data")
    if data is None and work.to_round:
        raise PlanError("quantize to int4 needs calibration data (its GPTQ rounding reads each layer's inputs): pass --data")
    return qdq.realize(graph, precisions, work, stripped, data, params.calibration, ctx.seed)


# reads and rewrites its own QDQ forms (no float weights needed); the structural passes read float
# weights, so it comes after them
register("quantize", QuantizeParams, needs_float_weights=False, terminal=True)(quantize)
