"""Least-squares reconstruction of the layers that read pruned channels (ThiNet; He et al. 2017).

After a cut, a layer L that lost input channels is re-fitted so that, on calibration data, its
output from the *pruned* network's input is as close as possible (ridge least squares) to the
teacher's output of L for the channels L keeps. Layers are processed in topological order and each
sees the inputs of the already-reconstructed network, so errors do not compound. This is what
makes candidates good without fine-tuning, which the search relies on.

Written by hand because no library does it on an ONNX graph: onnxruntime runs the networks,
torch's unfold builds the convolution patches, numpy solves the normal equations.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcompress.compiler.ir import Analysis
from onnxcompress.compiler.onnx_io import export_graph
from onnxcompress.compiler.runtime import intermediate_outputs

MAX_ROWS = 12000  # sampled rows (positions x images) per layer: enough for ~2k unknowns
RIDGE = 1e-4


def _conv_rows(x: np.ndarray, node: gs.Node, w_shape: tuple) -> np.ndarray | None:
    """im2col of the layer input: (N*positions, Cin*kh*kw)."""
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or len(w_shape) != 4:
        return None
    kh, kw = w_shape[2], w_shape[3]
    pads = list(node.attrs.get("pads", [0, 0, 0, 0]))
    strides = list(node.attrs.get("strides", [1, 1]))
    dil = list(node.attrs.get("dilations", [1, 1]))
    import torch  # lazy: keeps `onnxcompress inspect` and friends quick to start
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    t = F.pad(t, (pads[1], pads[3], pads[0], pads[2]))
    cols = F.unfold(t, (kh, kw), dilation=dil, stride=strides)  # (N, C*kh*kw, L)
    return cols.permute(0, 2, 1).reshape(-1, cols.shape[1]).numpy()


def _solve(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ridge least squares with a bias column: returns (features+1, outputs)."""
    a1 = np.concatenate([a, np.ones((a.shape[0], 1), a.dtype)], axis=1).astype(np.float64)
    ata = a1.T @ a1
    lam = RIDGE * np.trace(ata) / ata.shape[0]
    ata[np.diag_indices_from(ata)] += lam
    return np.linalg.solve(ata, a1.T @ y.astype(np.float64))


def _layers_to_fit(graph: gs.Graph, analysis: Analysis, keep: dict[int, np.ndarray]) -> list[gs.Node]:
    touched = set(keep)
    names = {s.node for s in analysis.slices if s.role == "in" and touched.intersection(s.layout.spaces)}
    return [n for n in graph.nodes if n.name in names]


def reconstruct(
    graph: gs.Graph, teacher: onnx.ModelProto, analysis: Analysis, keep: dict[int, np.ndarray], x: np.ndarray, seed: int
) -> gs.Graph:
    layers = _layers_to_fit(graph, analysis, keep)
    if not layers:
        return graph
    rng = np.random.default_rng(seed)
    targets = intermediate_outputs(teacher, x, [n.outputs[0].name for n in layers])
    out_slices = {s.node: s for s in analysis.slices if s.role == "out"}
    for node in layers:
        student = export_graph(graph.copy(), infer=True)
        xin = intermediate_outputs(student, x, [node.inputs[0].name])[node.inputs[0].name]
        y = targets[node.outputs[0].name]
        w = node.inputs[1].values
        if node.op == "Conv":
            if int(node.attrs.get("group", 1)) != 1:
                continue
            rows = _conv_rows(xin, node, w.shape)
            if rows is None:
                continue
            out_idx = out_slices[node.name].layout.indices(keep) if node.name in out_slices else np.arange(y.shape[1])
            yt = np.moveaxis(y[:, out_idx], 1, -1).reshape(-1, len(out_idx))
        elif node.op in ("Gemm", "MatMul"):
            if node.op == "Gemm" and (float(node.attrs.get("alpha", 1.0)) != 1.0 or float(node.attrs.get("beta", 1.0)) != 1.0):
                continue
            rows = xin.reshape(-1, xin.shape[-1])
            out_idx = out_slices[node.name].layout.indices(keep) if node.name in out_slices else np.arange(y.shape[-1])
            yt = y.reshape(-1, y.shape[-1])[:, out_idx]
        else:
            continue
        if rows.shape[0] > MAX_ROWS:
            pick = rng.choice(rows.shape[0], MAX_ROWS, replace=False)
            rows, yt = rows[pick], yt[pick]
        if rows.shape[0] < rows.shape[1] // 4:
            continue  # too few samples for a meaningful fit
        sol = _solve(rows, yt)
        weight, bias = sol[:-1].T.astype(np.float32), sol[-1].astype(np.float32)
        if node.op == "Conv":
            node.inputs[1].values = weight.reshape(w.shape)
        elif node.op == "Gemm" and int(node.attrs.get("transB", 0)):
            node.inputs[1].values = weight
        else:
            node.inputs[1].values = np.ascontiguousarray(weight.T)
        _set_bias(graph, node, bias)
    return graph


def _set_bias(graph: gs.Graph, node: gs.Node, bias: np.ndarray) -> None:
    if node.op == "MatMul":
        # the bias of a MatMul lives in a following Add; fold the fitted bias into it when there
        # is one, otherwise the fit's bias is dropped (MatMul has none)
        consumer = node.outputs[0].outputs[0] if len(node.outputs[0].outputs) == 1 else None
        if consumer is not None and consumer.op == "Add":
            other = [t for t in consumer.inputs if isinstance(t, gs.Constant)]
            if other and other[0].values.size == bias.size:
                other[0].values = bias.reshape(other[0].values.shape)
        return
    if len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant):
        node.inputs[2].values = bias.reshape(node.inputs[2].values.shape)
    else:
        node.inputs.append(gs.Constant(node.name + "_bias", bias))
