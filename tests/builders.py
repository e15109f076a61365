"""Small CNN graphs built in code with onnx.helper, for tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Builds an NCHW float classifier node by node. Methods return the output tensor name."""

    def __init__(self, channels: int = 3, size: int = 8, seed: int = 0, opset: int = 17):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.opset = opset
        self.size = size
        self.input = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])
        self._n = 0

    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def const(self, values: np.ndarray, prefix: str = "w") -> str:
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> str:
        name = self._name(op.lower())
        outs = [f"{name}_out{i}" if i else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0]

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1, bias: bool = True, pads=None) -> str:
        w = self.const((self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k))).astype(np.float32))
        ins = [x, w]
        if bias:
            ins.append(self.const((self.rng.standard_normal(cout) * 0.1).astype(np.float32), "b"))
        p = pads if pads is not None else [k // 2] * 4
        return self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=p, group=group)

    def bn(self, x: str, c: int) -> str:
        scale = self.const((self.rng.random(c) + 0.5).astype(np.float32), "bn")
        bias = self.const((self.rng.standard_normal(c) * 0.1).astype(np.float32), "bn")
        mean = self.const((self.rng.standard_normal(c) * 0.1).astype(np.float32), "bn")
        var = self.const((self.rng.random(c) + 0.5).astype(np.float32), "bn")
        return self.node("BatchNormalization", [x, scale, bias, mean, var])

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def add(self, a: str, b: str) -> str:
        return self.node("Add", [a, b])

    def concat(self, xs: list[str]) -> str:
        return self.node("Concat", xs, axis=1)

    def head(self, x: str, c: int, classes: int = 10, softmax: bool = False) -> str:
        p = self.node("GlobalAveragePool", [x])
        f = self.node("Flatten", [p], axis=1)
        w = self.const((self.rng.standard_normal((classes, c)) * 0.3).astype(np.float32))
        b = self.const((self.rng.standard_normal(classes) * 0.1).astype(np.float32), "b")
        y = self.node("Gemm", [f, w, b], transB=1)
        return self.node("Softmax", [y], axis=1) if softmax else y

    def build(self, output: str, classes: int | None = None) -> onnx.ModelProto:
        out = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
        graph = helper.make_graph(self.nodes, "test", [self.input], [out], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
        return model


def resnet_like(seed: int = 0, width: int = 8, blocks: int = 2, bn: bool = False) -> onnx.ModelProto:
    g = GraphBuilder(seed=seed)
    x = g.relu(g.conv("x", 3, width))
    for _ in range(blocks):
        h = g.relu(g.conv(x, width, width))
        h = g.conv(h, width, width)
        if bn:
            h = g.bn(h, width)
        x = g.relu(g.add(x, h))
    return g.build(g.head(x, width))


def fire_like(seed: int = 0) -> onnx.ModelProto:
    g = GraphBuilder(seed=seed)
    x = g.relu(g.conv("x", 3, 16))
    s = g.relu(g.conv(x, 16, 4, k=1, pads=[0, 0, 0, 0]))
    e1 = g.relu(g.conv(s, 4, 8, k=1, pads=[0, 0, 0, 0]))
    e3 = g.relu(g.conv(s, 4, 8))
    c = g.concat([e1, e3])
    y = g.relu(g.conv(c, 16, 12, k=1, pads=[0, 0, 0, 0]))
    return g.build(g.head(y, 12))


def mobilenet_like(seed: int = 0) -> onnx.ModelProto:
    g = GraphBuilder(seed=seed)
    x = g.relu(g.conv("x", 3, 8))
    e = g.relu(g.conv(x, 8, 24, k=1, pads=[0, 0, 0, 0]))
    d = g.relu(g.conv(e, 24, 24, group=24))
    p = g.conv(d, 24, 8, k=1, pads=[0, 0, 0, 0])
    x = g.add(x, p)
    return g.build(g.head(x, 8))


def conv_macs(model: onnx.ModelProto) -> int:
    """An independent MAC count straight from the ONNX protobuf (weights and inferred shapes)."""
    m = onnx.shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in list(m.graph.value_info) + list(m.graph.output)}
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    total = 0
    for n in m.graph.node:
        if n.op_type == "Conv":
            w = inits[n.input[1]]
            out = shapes[n.output[0]]
            total += int(np.prod(w.shape)) * out[2] * out[3]
        elif n.op_type in ("Gemm", "MatMul") and n.input[1] in inits:
            # a MatMul on (N, ..., C) applies its weight at every position between batch and channels
            rows = int(np.prod(shapes[n.output[0]][1:-1])) if n.op_type == "MatMul" and n.output[0] in shapes else 1
            total += int(np.prod(inits[n.input[1]].shape)) * rows
    return total


def silence_and_prune(model: onnx.ModelProto, gid: str, drop: list[int]) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(the model with channels `drop` of group `gid` zeroed at every producer's weights and
    biases, that model with those channels pruned): a lossless cut must give the same outputs
    as the silenced model."""
    from onnxcompress.compiler.ir import analyze, keep_by_space
    from onnxcompress.compiler.onnx_io import import_graph
    from onnxcompress.passes import Plan, apply_plan

    a = analyze(import_graph(model))
    g = a.group(gid)
    keep = np.asarray([c for c in range(g.channels) if c not in drop])
    by_space = keep_by_space(a, {gid: keep})
    silenced = onnx.ModelProto()
    silenced.CopyFrom(model)
    inits = {i.name: i for i in silenced.graph.initializer}
    nodes = {n.name: n for n in silenced.graph.node}
    for s in a.slices:
        if s.role not in ("out", "param", "dw", "bn_scale") or not set(s.layout.spaces) & set(g.spaces):
            continue
        if nodes[s.node].op_type in ("BatchNormalization", "LayerNormalization", "InstanceNormalization"):
            continue  # normalisation shifts: a zero producer row already silences the channel before them
        init = inits[nodes[s.node].input[s.input_index]]
        w = onnx.numpy_helper.to_array(init).copy()
        kept = set(s.layout.indices(by_space).tolist())
        index = [slice(None)] * w.ndim
        index[s.axis] = [i for i in range(w.shape[s.axis]) if i not in kept]
        w[tuple(index)] = 0.0
        init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    pruned = apply_plan(silenced, Plan.from_json({"passes": [{"pass": "prune_channels", "group": gid, "indices": keep.tolist()}]}))
    return silenced, pruned
