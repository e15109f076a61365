"""What a per-layer precision map costs: file bytes and measured latency (HAQ's hardware feedback).

The search calls this; it never needs to know how the quantize pass writes a layer.

    cost = PrecisionCost.build(model, sample)        # model: canonical fp32; sample: preprocessed inputs
    cost.size_bytes({"conv_1": 8, "conv_2": 4})      # bytes of the file the quantize pass would write
    cost.latency_delta("conv_1", 8)                  # ms the model gains (+: slower) at batch 32
    cost.latency_ratio({"conv_1": 8, "conv_2": 4})   # estimated latency of the map / fp32 latency
    cost.uniform_latency[8]                          # measured: every layer at int8
    measure_layer_latency(model, "conv_1", 8, sample)  # one table entry, measured on its own

Size is measured, not modelled: `build` writes every layer at every precision through the same
code the pass uses (qdq.py, with round-to-nearest weights: the byte count does not
depend on the integer values) and attributes the serialized bytes to layers. An int8 map also
pays a measured number of bytes per activation Q/DQ pair; which tensors get a pair for a given
map comes from the pass's own planner, so shared pairs are counted once. `size_bytes` matches the
written file to within a few bytes per layer (tests compare it with real files).
`compiler.cost.BYTES_PER_ELEMENT` is the first-order version of the same thing (weights only).

Latency is HAQ's lookup table measured on this machine: for each layer and precision, the
model with only that layer at that precision is timed against the fp32 model, all side by side
in one run (`paired_latency`), at batch 1 and 32, in CPU time of the (single) inference thread:
on a shared machine wall time mostly measures the other jobs (identical models differ by 10 %
run to run), CPU time by ~2 %. A positive delta means the
precision makes the model slower: a layer whose lone Q/DQ pair costs more than its int8 kernel
saves (the 3-channel first convolution of an image model is the usual case on this CPU), or an
int4 weight-only layer, which onnxruntime dequantizes at every run and can no longer pre-pack
for its fp32 NCHWc kernel. The table is not additive for int8: in a chain of int8 layers
neighbours share their Q/DQ pairs and onnxruntime keeps the whole chain in its NHWC int8
layout, so the all-int8 ResNet-8 is ~0.7x fp32 while every one of its layers alone is slower.
`build` therefore also times the uniform maps (every layer at one precision), and
`latency_ratio` interpolates: an int8 layer contributes its lone delta when none of its
neighbouring layers is int8, its MAC share of the all-int8 gain when all are, and the mix in
between; int4 and fp16 layers add their lone deltas (they have no pairs to share). The estimate
is exact for single-layer and uniform maps and an estimate in between; the evaluator's
end-to-end measurement stays the truth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcompress.passes.quantize import forms, qdq
from onnxcompress.passes.quantize.activations import ActivationPlan, calibrate, plan_activations
from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.onnx_io import export_graph, import_graph
from onnxcompress.compiler.runtime import Latency, paired_latency
from onnxcompress.compiler.errors import PlanError

QUANTIZED_PRECISIONS = tuple(b for b in forms.PRECISIONS if b != 32)  # (16, 8, 4)
_UNIFORM = ""  # key of the every-layer-at-one-precision model in the latency measurements


@dataclass(frozen=True)
class LayerLatency:
    """Latency change of the whole model when only `node` is stored at `bits` (ms; + = slower)."""

    node: str
    bits: int
    batch1_ms: float
    batch32_ms: float

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "bits": self.bits, "batch1_ms": round(self.batch1_ms, 4), "batch32_ms": round(self.batch32_ms, 4)}


# ----------------------------------------------------------------------------------------------
# building quantized variants without data (for measuring only)
# ----------------------------------------------------------------------------------------------


def _float_graph(model: onnx.ModelProto) -> gs.Graph:
    graph = import_graph(model)
    forms.strip(graph)
    return graph


def _variant(
    base: gs.Graph,
    template: onnx.ModelProto,
    precisions: Mapping[str, int],
    activations: Mapping[str, forms.ActivationParams],
    with_pairs: bool = True,
) -> onnx.ModelProto:
    """`base` (float) with `precisions` emitted by the pass's own code; weights rounded to
    nearest (no data needed), activation parameters taken from `activations`."""
    graph = base.copy()
    layers = {n.name: n for n in graph.nodes}
    weights = {}
    for name, bits in precisions.items():
        if bits in (8, 4):
            w = np.asarray(layers[name].inputs[1].values, dtype=np.float32)
            weights[name] = forms.round_to_nearest(w, bits, forms.weight_axis(layers[name], w.ndim))
    int8 = frozenset(n for n, b in precisions.items() if b == 8)
    plan = plan_activations(graph, int8) if with_pairs else ActivationPlan(frozenset(), (), {})
    qdq.emit(graph, precisions, plan, activations, weights)
    return export_graph(graph, template=template)


def _placeholder_params(tensors: Sequence[str]) -> dict[str, forms.ActivationParams]:
    """Parameters that only have to be well-formed (byte counts do not depend on them)."""
    return {t: forms.ActivationParams(0.05, 0) for t in tensors}


def _all_plan_tensors(graph: gs.Graph, layers: Sequence[str]) -> list[str]:
    """Tensors any single-layer or all-int8 plan calibrates."""
    wanted: list[str] = []
    plans = [plan_activations(graph, frozenset(layers))] + [plan_activations(graph, frozenset([n])) for n in layers]
    for plan in plans:
        wanted.extend(t for t in plan.calibrated if t not in wanted)
    return wanted


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# bytes
# ----------------------------------------------------------------------------------------------


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def _field_bytes(msg: Any) -> int:
    """Bytes one element of a repeated message field takes in the serialized model."""
    size = msg.ByteSize()
    return 1 + _varint_len(size) + size


def _pair_bytes(model: onnx.ModelProto) -> list[int]:
    """Serialized bytes of each activation Q/DQ pair of a QDQ model (nodes, scale and zero
    point initializers, value_info of the two new tensors)."""
    inits = {t.name: t for t in model.graph.initializer}
    infos = {v.name: v for v in model.graph.value_info}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out = []
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in inits:
            continue
        dqs = [c for c in consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"]
        total = _field_bytes(q) + sum(_field_bytes(d) for d in dqs)
        total += sum(_field_bytes(inits[i]) for i in q.input[1:] if i in inits)
        total += sum(_field_bytes(infos[t]) for t in [q.output[0]] + [d.output[0] for d in dqs] if t in infos)
        out.append(total)
    return out


# ----------------------------------------------------------------------------------------------
# the cost object
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionCost:
    """Size and latency of precision maps for one (canonical, fp32) model. Build with `build`.

    layers: the quantizable layers, in graph order.
    fp32_bytes: serialized size of the fp32 model as the pass pipeline writes it.
    layer_bytes: (layer, bits) -> bytes that storing that layer at `bits` adds (negative: saves);
        weights, int32 bias, scales, zero points, their nodes; no activation pairs.
    opset21_bytes: extra bytes of the opset-21 form (a map with any int4 layer).
    pair_bytes: bytes of one int8 activation Q/DQ pair (measured mean).
    fp32_latency: the fp32 model's latency, measured in the same run as the table (None without
        a sample).
    latency: (layer, bits) -> LayerLatency (empty without a sample).
    uniform_latency: bits -> latency of the model with every layer at `bits` (same run).
    macs: layer -> multiply-accumulates; neighbours: layer -> the layers it exchanges
        activations with through non-layer ops (both directions).
    """

    layers: tuple[str, ...]
    fp32_bytes: int
    layer_bytes: Mapping[tuple[str, int], int]
    opset21_bytes: int
    pair_bytes: float
    fp32_latency: Latency | None = None
    latency: Mapping[tuple[str, int], LayerLatency] = field(default_factory=dict)
    uniform_latency: Mapping[int, Latency] = field(default_factory=dict)
    macs: Mapping[str, int] = field(default_factory=dict)
    neighbours: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    graph: gs.Graph | None = field(default=None, repr=False, compare=False)  # float form, for planning

    @classmethod
    def build(
        cls,
        model: onnx.ModelProto,
        sample: np.ndarray | None = None,
        precisions: Sequence[int] = QUANTIZED_PRECISIONS,
        rounds: int = 9,
    ) -> "PrecisionCost":
        """Measures the size table (always) and the latency table (when `sample`, preprocessed
        model inputs, is given: its first 32 make the batch; int8 ranges are measured on it).
        `model` is canonical and float (as the search holds it)."""
        for b in precisions:
            if b not in QUANTIZED_PRECISIONS:
                raise PlanError(f"precision table: bits must be among {QUANTIZED_PRECISIONS}, got {b}")
        graph = _float_graph(model)
        layers = analyze(graph).quantizable
        fp32 = export_graph(graph.copy(), template=model)
        fp32_bytes = fp32.ByteSize()
        graph21 = forms.ensure_opset(graph.copy(), forms.INT4_MIN_OPSET) if 4 in precisions else None
        fp32_21 = export_graph(graph21.copy(), template=model) if graph21 is not None else None
        placeholders = _placeholder_params(_all_plan_tensors(graph, layers)) if 8 in precisions else {}

        layer_bytes: dict[tuple[str, int], int] = {}
        pair_sizes: list[int] = []
        for bits in precisions:
            base, base_bytes = (graph21, fp32_21.ByteSize()) if bits == 4 else (graph, fp32_bytes)  # type: ignore[union-attr]
            for name in layers:
                variant = _variant(base, model, {name: bits}, placeholders)
                pairs = _pair_bytes(variant) if bits == 8 else []
                pair_sizes.extend(pairs)
                layer_bytes[(name, bits)] = variant.ByteSize() - base_bytes - sum(pairs)
        if 8 in precisions and len(layers) > 1:
            pair_sizes.extend(_pair_bytes(_variant(graph, model, {n: 8 for n in layers}, placeholders)))
        pair_bytes = float(np.mean(pair_sizes)) if pair_sizes else 0.0
        opset21_bytes = fp32_21.ByteSize() - fp32_bytes if fp32_21 is not None else 0

        fp32_latency = None
        latency: dict[tuple[str, int], LayerLatency] = {}
        uniform: dict[int, Latency] = {}
        if sample is not None:
            keys, models = _latency_models(model, graph, graph21, layers, precisions, sample)
            fp32_latency, measured = paired_latency(fp32, models, sample, rounds=rounds, cpu=True)
            for (name, bits), lat in zip(keys, measured):
                if name == _UNIFORM:
                    uniform[bits] = lat
                else:
                    latency[(name, bits)] = LayerLatency(name, bits, lat.batch1 - fp32_latency.batch1, lat.batch32 - fp32_latency.batch32)
        analysis = analyze(graph)
        macs = {layer.name: int(layer.macs) for layer in analysis.layers if layer.name in layers}
        return cls(
            tuple(layers), fp32_bytes, layer_bytes, opset21_bytes, pair_bytes, fp32_latency, latency, uniform, macs, _layer_neighbours(graph, layers), graph
        )

    # -- queries ---------------------------------------------------------------------------------

    def _check(self, bits_by_node: Mapping[str, int]) -> dict[str, int]:
        out = {}
        for name, bits in bits_by_node.items():
            if name not in self.layers:
                raise PlanError(f"precision cost: '{name}' is not a quantizable layer of the model")
            if bits not in forms.PRECISIONS:
                raise PlanError(f"precision cost: bits must be one of {forms.PRECISIONS}, got {bits} for '{name}'")
            if bits != 32:
                if (name, bits) not in self.layer_bytes:
                    raise PlanError(f"precision cost: the table was built without {bits}-bit entries")
                out[name] = int(bits)
        return out

    def size_bytes(self, bits_by_node: Mapping[str, int]) -> int:
        """Bytes of the model file the quantize pass writes for this map (layers not named: fp32)."""
        bits = self._check(bits_by_node)
        size = self.fp32_bytes + sum(self.layer_bytes[(n, b)] for n, b in bits.items())
        if any(b == 4 for b in bits.values()):
            size += self.opset21_bytes
        int8 = frozenset(n for n, b in bits.items() if b == 8)
        if int8 and self.graph is not None:
            size += int(round(len(plan_activations(self.graph.copy(), int8).tensors) * self.pair_bytes))
        return int(size)

    def latency_delta(self, node: str, bits: int, batch: int = 32) -> float:
        """Measured ms the model gains when only `node` is at `bits` (+: slower). 0 for 32 bits."""
        if batch not in (1, 32):
            raise ValueError("latency is measured at batch 1 and 32")
        self._check({node: bits})
        if bits == 32:
            return 0.0
        entry = self.latency.get((node, bits))
        if entry is None:
            raise PlanError("precision cost: no latency table (build it with a sample)")
        return entry.batch1_ms if batch == 1 else entry.batch32_ms

    def latency_ms(self, bits_by_node: Mapping[str, int], batch: int = 32) -> float:
        """Estimated latency of the map in ms (module docstring: how, and how exact)."""
        if self.fp32_latency is None:
            raise PlanError("precision cost: no latency table (build it with a sample)")
        bits = self._check(bits_by_node)
        pick = (lambda lat: lat.batch1) if batch == 1 else (lambda lat: lat.batch32)
        base = pick(self.fp32_latency)
        int8 = {n for n, b in bits.items() if b == 8}
        total_macs = sum(self.macs.get(n, 0) for n in self.layers) or 1
        total = base
        for name, b in bits.items():
            alone = self.latency_delta(name, b, batch)
            if b != 8 or 8 not in self.uniform_latency:
                total += alone
                continue
            near = self.neighbours.get(name, ())
            shared = sum(1 for n in near if n in int8) / len(near) if near else 0.0
            in_chain = (pick(self.uniform_latency[8]) - base) * self.macs.get(name, 0) / total_macs
            total += shared * in_chain + (1.0 - shared) * alone
        return max(total, 0.0)

    def latency_ratio(self, bits_by_node: Mapping[str, int], batch: int = 32) -> float:
        """Estimated latency of the map as a fraction of fp32."""
        base = self.fp32_latency.batch1 if batch == 1 else self.fp32_latency.batch32  # type: ignore[union-attr]
        return self.latency_ms(bits_by_node, batch) / base

    def slower_layers(self, bits: int, batch: int = 32) -> tuple[str, ...]:
        """Layers that the table says make the model slower at `bits`."""
        return tuple(n for n in self.layers if (n, bits) in self.latency and self.latency_delta(n, bits, batch) > 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "fp32_bytes": self.fp32_bytes,
            "layer_bytes": [{"node": n, "bits": b, "bytes": v} for (n, b), v in self.layer_bytes.items()],
            "opset21_bytes": self.opset21_bytes,
            "pair_bytes": round(self.pair_bytes, 2),
            "fp32_latency": None if self.fp32_latency is None else self.fp32_latency.to_json(),
            "latency": [e.to_json() for e in self.latency.values()],
            "uniform_latency": {str(b): lat.to_json() for b, lat in self.uniform_latency.items()},
        }


def _latency_models(
    model: onnx.ModelProto,
    graph: gs.Graph,
    graph21: gs.Graph | None,
    layers: Sequence[str],
    precisions: Sequence[int],
    sample: np.ndarray,
) -> tuple[list[tuple[str, int]], list[onnx.ModelProto]]:
    """One model per (layer, bits) with only that layer quantized; int8 ranges measured on
    `sample` (kernels and fusions depend on the zero points, not on the exact scales)."""
    params: dict[str, forms.ActivationParams] = {}
    if 8 in precisions:
        tensors = _all_plan_tensors(graph, layers)
        ranges = calibrate(export_graph(graph.copy(), template=model), tensors, np.asarray(sample[:64], dtype=np.float32))
        params = {t: forms.ActivationParams.from_range(*ranges[t]) for t in tensors if t in ranges}
    keys, models = [], []
    for bits in precisions:
        base = graph21 if bits == 4 else graph
        for name in layers:
            keys.append((name, bits))
            models.append(_variant(base, model, {name: bits}, params))  # type: ignore[arg-type]
        if len(layers) > 1:
            keys.append((_UNIFORM, bits))
            models.append(_variant(base, model, {n: bits for n in layers}, params))  # type: ignore[arg-type]
    return keys, models


def _layer_neighbours(graph: gs.Graph, layers: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """layer -> layers whose activations reach it, or that its activations reach, through
    non-layer ops only (Relu, Add, pools, reshapes)."""
    wanted = set(layers)
    nodes = {n.name: n for n in graph.nodes}

    def walk(start: gs.Node, forward: bool) -> set[str]:
        found: set[str] = set()
        stack = [start]
        seen = {start.name}
        while stack:
            node = stack.pop()
            tensors = node.outputs if forward else [t for t in node.inputs if isinstance(t, gs.Variable)]
            for t in tensors:
                nexts = list(t.outputs) if forward else list(t.inputs)
                for nxt in nexts:
                    if nxt.name in seen:
                        continue
                    seen.add(nxt.name)
                    if nxt.name in wanted:
                        found.add(nxt.name)
                    elif nxt.op not in forms.LAYER_OPS:
                        stack.append(nxt)
        return found

    return {n: tuple(sorted(walk(nodes[n], True) | walk(nodes[n], False))) for n in layers}


def measure_layer_latency(
    model: onnx.ModelProto, node: str, bits: int, sample: np.ndarray, rounds: int = 15
) -> LayerLatency:
    """Latency change of `model` (canonical fp32) when only `node` is stored at `bits`, measured
    side by side with the fp32 model."""
    if bits not in QUANTIZED_PRECISIONS:
        raise PlanError(f"measure_layer_latency: bits must be among {QUANTIZED_PRECISIONS}, got {bits}")
    graph = _float_graph(model)
    if node not in analyze(graph).quantizable:
        raise PlanError(f"measure_layer_latency: '{node}' is not a quantizable layer of the model")
    graph21 = forms.ensure_opset(graph.copy(), forms.INT4_MIN_OPSET) if bits == 4 else None
    fp32 = export_graph(graph.copy(), template=model)
    _, models = _latency_models(model, graph, graph21, [node], [bits], sample)
    base, (lat,) = paired_latency(fp32, models, sample, rounds=rounds, cpu=True)
    return LayerLatency(node, bits, lat.batch1 - base.batch1, lat.batch32 - base.batch32)
