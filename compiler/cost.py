"""Cost model: MACs, parameters and bytes, per layer and in total, at batch 1.

MACs count the multiply-accumulates of Conv, Gemm and MatMul, as in DESIGN.md:
Conv = Cout * Cin/groups * kh * kw * Hout * Wout; Gemm/MatMul = in * out (times the leading
non-batch dims of a MatMul input). Everything else is treated as free, which is what the published
figures (ResNet-20 40.6 M, SqueezeNet 1.1 349 M, ...) count too.

`SearchCost` predicts the MACs and params of a candidate *without* rewriting the graph: a layer's
cost is proportional to the fraction of its output channels and of its input channels that
survive, so cutting groups is a product of kept fractions (exact, not an estimate: tests compare
it with the rewritten graph).
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcompress.compiler.onnx_io import is_quantized
from onnxcompress.compiler.ops import ChannelLayout, const
from onnxcompress.compiler.ops import LAYER_OPS, WEIGHT_PRECISIONS
from onnxcompress.compiler.tensors import varint_size, copy_set_fields, serialized_tensor_size

if TYPE_CHECKING:  # pragma: no cover
    from onnxcompress.compiler.ir import Analysis

# bytes a weight element takes in each precision the quantize pass can emit
BYTES_PER_ELEMENT = {bits: bits / 8 for bits in WEIGHT_PRECISIONS}


def _int_dims(shape) -> list[int] | None:
    if shape is None or any(not isinstance(d, (int, np.integer)) for d in shape):
        return None
    return [int(d) for d in shape]


def node_macs(node: gs.Node) -> int:
    if node.op == "Conv":
        w = const(node.inputs[1])
        out = node.outputs[0].shape
        if w is None or out is None:
            return 0
        spatial = _int_dims(out[2:])
        if spatial is None:
            return 0
        return int(np.prod(w.shape)) * int(np.prod(spatial))  # Cout*Cin/g*kh*kw * Hout*Wout
    if node.op == "Gemm":
        b = const(node.inputs[1])
        return int(np.prod(b.shape)) if b is not None else 0
    if node.op == "MatMul":
        b = const(node.inputs[1])
        a_shape = node.inputs[0].shape
        if b is None or a_shape is None:
            return 0
        lead = _int_dims(a_shape[1:-1]) if len(a_shape) > 2 else []
        return int(np.prod(b.shape)) * int(np.prod(lead or [1]))
    return 0


def node_params(node: gs.Node) -> int:
    """Float parameters held by a node's constant inputs (weights, bias, BN, ...)."""
    return sum(
        int(c.size) for c in map(const, node.inputs) if c is not None and np.issubdtype(c.dtype, np.floating)
    )


def layer_channels(node: gs.Node) -> tuple[int, int]:
    """(input channels, output channels) of a Conv / Gemm / MatMul."""
    w = const(node.inputs[1])
    if w is None:
        return 0, 0
    if node.op == "Conv":
        return int(w.shape[1]) * int(node.attrs.get("group", 1)), int(w.shape[0])
    if node.op == "Gemm" and int(node.attrs.get("transB", 0)):
        return int(w.shape[1]), int(w.shape[0])
    return int(w.shape[0]), int(w.shape[1])


@dataclass(frozen=True)
class ModelCost:
    macs: int
    params: int
    size_bytes: int

    def to_json(self) -> dict[str, int]:
        return {"macs": self.macs, "params": self.params, "size_bytes": self.size_bytes}


def graph_macs(graph: gs.Graph) -> int:
    return sum(node_macs(n) for n in graph.nodes)


def model_params(model: onnx.ModelProto) -> int:
    """Elements of float initializers (the parameters a quantizer would store), plus those of
    int8/int4 weights behind DequantizeLinear in a quantized graph."""
    count = 0
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    dq_inputs = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for init in model.graph.initializer:
        if init.data_type in float_types or init.name in dq_inputs:
            if init.data_type in float_types and any(
                n.op_type == "DequantizeLinear" and init.name in n.input[1:] for n in model.graph.node
            ):
                continue  # a quantization scale, not a parameter
            count += int(np.prod(init.dims)) if len(init.dims) else 1
    return count


def serialized_size(model: onnx.ModelProto) -> int:
    """`model.ByteSize()`, computed without serialising the weights: protobuf's Python runtime
    serialises the whole message to size it (1 GB of transient copies and 1.7 s for a 550 MB
    VGG-16). Exact (tests compare it with ByteSize)."""
    head = onnx.ModelProto()
    copy_set_fields(model, head, ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"))
    head.opset_import.extend(model.opset_import)
    head.metadata_props.extend(model.metadata_props)
    head.functions.extend(model.functions)
    head.training_info.extend(model.training_info)
    if not model.HasField("graph"):
        return head.ByteSize()
    graph = onnx.GraphProto()
    copy_set_fields(model.graph, graph, ("name", "doc_string"))
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    graph.sparse_initializer.extend(model.graph.sparse_initializer)
    graph.quantization_annotation.extend(model.graph.quantization_annotation)
    graph.metadata_props.extend(model.graph.metadata_props)
    graph_size = graph.ByteSize()
    for init in model.graph.initializer:
        size = serialized_tensor_size(init)
        graph_size += 1 + varint_size(size) + size  # GraphProto field 5: tag, length, tensor
    return head.ByteSize() + 1 + varint_size(graph_size) + graph_size  # ModelProto field 7: tag, length, graph


def model_cost(model: onnx.ModelProto, graph: gs.Graph | None = None) -> ModelCost:
    g = graph if graph is not None else gs.import_onnx(model)
    macs = graph_macs(g)
    if is_quantized(model):
        macs = _quantized_macs(g)
    return ModelCost(macs=macs, params=model_params(model), size_bytes=serialized_size(model))


def _quantized_macs(graph: gs.Graph) -> int:
    """MACs of a QDQ graph: weights sit behind DequantizeLinear, so read their shapes there."""
    total = 0
    for node in graph.nodes:
        if node.op not in LAYER_OPS or len(node.inputs) < 2:
            continue
        w_t = node.inputs[1]
        shape = None
        if isinstance(w_t, gs.Constant):
            shape = const(w_t).shape
        elif w_t.inputs and w_t.inputs[0].op == "DequantizeLinear" and isinstance(w_t.inputs[0].inputs[0], gs.Constant):
            shape = const(w_t.inputs[0].inputs[0]).shape
        elif w_t.shape is not None:
            shape = _int_dims(w_t.shape)
        if shape is None:
            continue
        if node.op == "Conv":
            out = node.outputs[0].shape
            spatial = _int_dims(out[2:]) if out is not None else None
            total += int(np.prod(shape)) * int(np.prod(spatial or [0]))
        elif node.op == "MatMul" and node.inputs[0].shape is not None and len(node.inputs[0].shape) > 2:
            total += int(np.prod(shape)) * int(np.prod(_int_dims(node.inputs[0].shape[1:-1]) or [1]))
        else:
            total += int(np.prod(shape))
    return total


# ----------------------------------------------------------------------------------------------
# cost of a candidate without rewriting
# ----------------------------------------------------------------------------------------------


def kept_before(keep: int, x: int, channels: int) -> int:
    """How many of a group's first `x` channels a cut that keeps `keep` of its `channels` keeps,
    when x is one of the group's cell boundaries (ChannelGroup.cells; 0 and `channels` are):
    the share of the kept channels, rounded half up, so that every range between boundaries
    keeps its share within one channel and the shares add up to `keep`."""
    return math.floor(keep * x / channels + 0.5) if channels else 0


@dataclass(frozen=True)
class _LayerTerm:
    name: str
    macs: int
    weight_params: int
    bias_params: int
    factors: tuple[ChannelLayout, ...]  # the product of their kept fractions scales the layer
    out_factor: ChannelLayout | None


class SearchCost:
    """MACs and params of the graph after keeping `keep[group_id]` channels of each group (counts,
    not indices: the cost does not depend on which channels survive) and dropping removable units."""

    def __init__(self, analysis: "Analysis") -> None:
        self._analysis = analysis
        self._group_of_space = analysis.space_group
        self._sizes = {g.id: g.channels for g in analysis.groups}
        terms = []
        by_node: dict[str, dict[str, ChannelLayout]] = {}
        for s in analysis.slices:
            by_node.setdefault(s.node, {})[s.role] = s.layout
        for layer in analysis.layers:
            roles = by_node.get(layer.name, {})
            factors = tuple(roles[r] for r in ("out", "in", "dw") if r in roles)
            out_factor = roles.get("out") or roles.get("dw")
            bias = sum(1 for s in analysis.slices if s.node == layer.name and s.role == "param")
            bias_params = layer.out_channels if bias else 0
            terms.append(_LayerTerm(layer.name, layer.macs, layer.params - bias_params, bias_params, factors, out_factor))
        self._terms = tuple(terms)
        self.total_macs = sum(t.macs for t in terms)
        self.total_layer_params = sum(t.weight_params + t.bias_params for t in terms)

    def _fraction(self, layout: ChannelLayout, keep: Mapping[str, int]) -> float:
        total = layout.channels
        kept = 0
        for seg in layout.segments:
            gid = self._group_of_space.get(seg.space)
            size = self._sizes.get(gid, seg.length)
            if gid is None or gid not in keep:
                kept += seg.width
            elif seg.start == 0 and seg.length == size:
                kept += seg.width * (keep[gid] / size)
            else:  # part of the group (a shuffled stream's half): exact when it spans whole cells
                k = keep[gid]
                kept += seg.repeat * (kept_before(k, seg.start + seg.length, size) - kept_before(k, seg.start, size))
        return kept / total if total else 1.0

    def macs(self, keep: Mapping[str, int], removed_layers: frozenset[str] = frozenset()) -> int:
        total = 0.0
        for t in self._terms:
            if t.name in removed_layers:
                continue
            f = 1.0
            for layout in t.factors:
                f *= self._fraction(layout, keep)
            total += t.macs * f
        return int(round(total))

    def layer_params(self, keep: Mapping[str, int], removed_layers: frozenset[str] = frozenset()) -> int:
        total = 0.0
        for t in self._terms:
            if t.name in removed_layers:
                continue
            f = 1.0
            for layout in t.factors:
                f *= self._fraction(layout, keep)
            total += t.weight_params * f
            if t.out_factor is not None:
                total += t.bias_params * self._fraction(t.out_factor, keep)
        return int(round(total))

    def layer_macs(self) -> dict[str, int]:
        return {t.name: t.macs for t in self._terms}
