"""MACs counted from the shapes onnxruntime actually computes, independent of compiler/cost.py and
of onnx's shape inference: every input and output of every Conv, Gemm and MatMul becomes a graph
output, the model runs once (graph optimisations off, so no tensor is fused away) on one input at
batch 1 (every count scales with the batch of the inputs given), and each layer's MACs come from
the arrays it produced:

- Conv: N * Cout * Cin / group * prod(kernel) * prod(output spatial dims), Cin from the input array;
- Gemm: M * K * N from the (transposed as the attributes say) A and B arrays;
- MatMul: prod(output dims) * K, K the last dim of A (broadcast batch dims included).

MatMuls whose B is a constant (an initializer or a Constant node) are weighted layers and count
with the rest; a MatMul of two computed tensors (attention) is counted apart (`activation_macs`):
DESIGN.md's MACs (what `inspect` reports) count weighted layers only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

LAYERS = ("Conv", "Gemm", "MatMul")


@dataclass
class RuntimeMacs:
    macs: int = 0  # Conv, Gemm and MatMul with a constant B (inspect's definition)
    activation_macs: int = 0  # MatMul of two computed tensors
    per_node: dict[str, int] = field(default_factory=dict)
    outputs: list[np.ndarray] = field(default_factory=list)  # the model's own outputs, in order


def feeds(model: onnx.ModelProto, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded normal inputs at `batch`; every other dimension must be fixed. (Like
    compiler/shapes._feeds on purpose: this counter shares no code with what it checks.)"""
    inits = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = []
        for k, d in enumerate(tt.shape.dim):
            if d.dim_value > 0:
                shape.append(d.dim_value)
            elif k == 0:
                shape.append(batch)
            else:
                raise ValueError(f"input {vi.name} has a dynamic dimension {k}: pin it first")
        out[vi.name] = rng.standard_normal(shape).astype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
    return out


def _node_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def runtime_macs(model: onnx.ModelProto, inputs: dict[str, np.ndarray] | None = None) -> RuntimeMacs:
    """Counts MACs from one onnxruntime run of `model` at batch 1 (or on `inputs`)."""
    import onnxruntime as ort

    inputs = feeds(model) if inputs is None else inputs
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    layers = [(i, n) for i, n in enumerate(model.graph.node) if n.op_type in LAYERS and n.domain in ("", "ai.onnx")]
    own = [o.name for o in model.graph.output]
    wanted = []
    for _, n in layers:
        for t in [*n.input[:2], n.output[0]]:
            if t and t not in inits and t not in inputs and t not in own and t not in wanted:
                wanted.append(t)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in wanted)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(m.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    names = [*own, *wanted]
    values = dict(zip(names, session.run(names, inputs)))
    shapes = {**inits, **{k: v.shape for k, v in inputs.items()}, **{k: v.shape for k, v in values.items()}}

    result = RuntimeMacs(outputs=[values[o] for o in own])
    for index, n in layers:
        a, b, y = shapes[n.input[0]], shapes[n.input[1]], shapes[n.output[0]]
        attrs = {at.name: helper.get_attribute_value(at) for at in n.attribute}
        weighted = True
        if n.op_type == "Conv":
            group = int(attrs.get("group", 1))
            macs = int(y[0]) * int(y[1]) * (int(a[1]) // group) * int(np.prod(b[2:])) * int(np.prod(y[2:]))
        elif n.op_type == "Gemm":
            m_dim, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])
            n_dim = b[0] if attrs.get("transB", 0) else b[1]
            macs = int(m_dim) * int(k) * int(n_dim)
        else:  # MatMul
            k = a[-1] if len(a) > 1 else a[0]
            macs = int(np.prod(y)) * int(k)
            weighted = n.input[1] in inits or n.input[1] in constants
        result.per_node[_node_name(n, index)] = macs
        if weighted:
            result.macs += macs
        else:
            result.activation_macs += macs
    return result
