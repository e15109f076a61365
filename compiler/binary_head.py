"""Binary classifiers with a single output score (a Keras `Dense(1, activation="sigmoid")`, a
PyTorch `Linear(C, 1)` + `Sigmoid`, or the bare logit) seen as two-class models, and back.

Everything downstream (argmax accuracy, softmax KD, cross-entropy, class subsets) needs one score
per class; with a single score, softmax is identically 1 and KD and cross-entropy learn nothing.
`sigmoid(z)` is exactly `softmax([0, z])[1]`, so the head's weights get a zero row in front:
logits `[0, z]`, the Sigmoid dropped, labels 0/1 unchanged, and argmax picks 1 exactly when
`sigmoid(z) > 0.5`. `restore_single_score` turns a student made from such a view back into the
user's interface: `z = logit1 - logit0` (exact for any trained logits, since
`softmax([a, b])[1] = sigmoid(b - a)`), then the Sigmoid if the teacher had one, under the
original output name and shape.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcompress.compiler.errors import ModelError

METADATA_KEY = "onnxcompress.binary_head"  # "sigmoid" or "logit": how to restore the single score


def is_single_score(model: onnx.ModelProto) -> bool:
    """One fixed output value per sample ([N, 1])."""
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value == 1


def recorded(model: onnx.ModelProto) -> str | None:
    return next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _consumers(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if name in n.input]


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _set_init(model: onnx.ModelProto, name: str, values: np.ndarray) -> None:
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(values.astype(numpy_helper.to_array(init).dtype), name))
            return


def _widen_bias(b: np.ndarray) -> np.ndarray:
    """[b] (any shape holding one value) -> [0, b] along the class axis."""
    if b.size != 1:
        raise ValueError("bias")
    flat = np.array([0.0, float(b.reshape(-1)[0])], dtype=b.dtype)
    return flat.reshape(b.shape[:-1] + (2,)) if b.ndim >= 1 else flat


def two_class_view(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a single-score classifier with logits [0, z] (see the module doc). ModelError for
    heads other than Gemm / MatMul (+ Add) with constant weights (+ Sigmoid)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    out = m.graph.output[0]
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producers = _producers(m)
    unsupported = ModelError("the model has a single output score per sample, from a head onnxcompress cannot widen to two "
                             "classes (it handles Gemm or MatMul [+ Add] layers, optionally followed by Sigmoid); export it with "
                             "2 outputs (softmax over negative, positive)")
    node = producers.get(out.name)
    kind = "logit"
    if node is not None and node.op_type == "Sigmoid":
        z = node.input[0]
        if len(_consumers(m, z)) != 1 or z not in producers:
            raise unsupported
        m.graph.node.remove(node)
        for n in m.graph.node:  # the logit tensor takes the output's name
            n.output[:] = [out.name if o == z else o for o in n.output]
        producers = _producers(m)
        node, kind = producers.get(out.name), "sigmoid"
    try:
        if node is not None and node.op_type == "Gemm" and node.input[1] in inits:
            w = inits[node.input[1]]
            zero = np.zeros_like(w)
            _set_init(m, node.input[1], np.concatenate([zero, w], axis=0 if _attr(node, "transB", 0) else 1))
            if len(node.input) > 2 and node.input[2] in inits:
                _set_init(m, node.input[2], _widen_bias(inits[node.input[2]]))
        elif node is not None and node.op_type == "Add":
            const = next(i for i in node.input if i in inits)
            other = next(i for i in node.input if i != const)
            matmul = producers[other]
            if matmul.op_type != "MatMul" or matmul.input[1] not in inits or len(_consumers(m, other)) != 1:
                raise ValueError("head")
            w = inits[matmul.input[1]]
            _set_init(m, matmul.input[1], np.concatenate([np.zeros_like(w), w], axis=1))
            _set_init(m, const, _widen_bias(inits[const]))
        elif node is not None and node.op_type == "MatMul" and node.input[1] in inits:
            w = inits[node.input[1]]
            _set_init(m, node.input[1], np.concatenate([np.zeros_like(w), w], axis=1))
        else:
            raise ValueError("head")
    except (ValueError, StopIteration, KeyError):
        raise unsupported from None
    out.type.tensor_type.shape.dim[1].dim_value = 2
    del m.graph.value_info[:]
    m.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=kind))
    return m


def restore_single_score(model: onnx.ModelProto) -> onnx.ModelProto:
    """The user's interface back on a model made from a `two_class_view` (the model itself when it
    is not one): one score `logit1 - logit0`, through a Sigmoid when the teacher had one. A float
    Gemm head folds the difference into its weights; other heads (a quantized one) get a 2 -> 1
    MatMul appended."""
    kind = recorded(model)
    if kind is None:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [p for p in m.metadata_props if p.key != METADATA_KEY]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    out = m.graph.output[0]
    final = out.name
    logit = final if kind == "logit" else final + "_logit"
    node = _producers(m).get(final)
    inits = {i.name: i for i in m.graph.initializer}
    foldable = (node is not None and node.op_type == "Gemm" and node.input[1] in inits
                and inits[node.input[1]].data_type == onnx.TensorProto.FLOAT
                and (len(node.input) < 3 or node.input[2] == "" or inits.get(node.input[2]) is not None))
    if foldable:
        w = numpy_helper.to_array(inits[node.input[1]])
        w1 = (w[1:2] - w[0:1]) if _attr(node, "transB", 0) else (w[:, 1:2] - w[:, 0:1])
        _set_init(m, node.input[1], w1)
        if len(node.input) > 2 and node.input[2]:
            b = numpy_helper.to_array(inits[node.input[2]]).reshape(-1)
            _set_init(m, node.input[2], np.array([b[-1] - b[0]] if b.size == 2 else b, dtype=b.dtype))
        node.output[:] = [logit if o == final else o for o in node.output]
    else:
        two = final + "_two_class"
        for n in m.graph.node:
            n.output[:] = [two if o == final else o for o in n.output]
        diff = final + "_difference"
        m.graph.initializer.append(numpy_helper.from_array(np.array([[-1.0], [1.0]], np.float32), diff))
        m.graph.node.append(helper.make_node("MatMul", [two, diff], [logit], name=final + "_to_single_score"))
    if kind == "sigmoid":
        m.graph.node.append(helper.make_node("Sigmoid", [logit], [final], name=final + "_sigmoid"))
    out.type.tensor_type.shape.dim[1].dim_value = 1
    del m.graph.value_info[:]
    return m
