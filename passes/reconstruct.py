"""Least-squares reconstruction of the layers that read pruned channels (ThiNet; He et al. 2017),
and of the layers after a removed block (`refit`, `downstream_layers`).

After a cut, a layer L that lost input channels is re-fitted so that, on calibration data, its
output from the *pruned* network's input is as close as possible (ridge least squares) to the
teacher's output of L for the channels L keeps. Layers are processed in topological order and each
sees the inputs of the already-reconstructed network, so errors do not compound. This is what
makes candidates good without fine-tuning, which the search relies on.

Written by hand because no library does it on an ONNX graph: onnxruntime runs the networks,
numpy gathers sampled convolution patches and solves the normal equations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcompress.compiler.ir import Analysis
from onnxcompress.compiler.onnx_io import export_graph
from onnxcompress.compiler.runtime import intermediate_outputs, starts_of
from onnxcompress.compiler.ops import LAYER_OPS, REFIT_PASS_THROUGH_OPS

MAX_ROWS = 12000  # sampled rows (positions x images) per layer, at most
ROWS_PER_UNKNOWN = 10  # with the ridge term, ten rows per unknown weight fit well


def _rows_for(features: int) -> int:
    return int(min(MAX_ROWS, max(4000, ROWS_PER_UNKNOWN * (features + 1))))


def _images_for(positions: int, rows: int, available: int) -> int:
    """Calibration images to run for a layer: enough positions to sample `rows` from 4x over."""
    return int(min(available, max(16, -(-4 * rows // max(positions, 1)))))
RIDGE = 1e-4


def _conv_patches(x: np.ndarray, node: gs.Node, w_shape: tuple, rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray] | None:
    """`rows` random (image, output position) patches of the layer input, flattened like the
    weight (Cin*kh*kw), and the positions they were taken at. Gathering only the sampled patches
    instead of a full im2col keeps the refit cheap on large calibration sets."""
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or len(w_shape) != 4:
        return None
    kh, kw = int(w_shape[2]), int(w_shape[3])
    top, left, bottom, right = (list(node.attrs.get("pads", [0, 0, 0, 0])) + [0, 0, 0, 0])[:4]
    sh, sw = list(node.attrs.get("strides", [1, 1]))
    dh, dw = list(node.attrs.get("dilations", [1, 1]))
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, c, hp, wp = xp.shape
    oh, ow = (hp - (kh - 1) * dh - 1) // sh + 1, (wp - (kw - 1) * dw - 1) // sw + 1
    total = n * oh * ow
    pick = rng.choice(total, min(rows, total), replace=False) if total > rows else np.arange(total)
    ni, rest = np.divmod(pick, oh * ow)
    yi, xi = np.divmod(rest, ow)
    ki = (yi * sh)[:, None, None] + (np.arange(kh) * dh)[None, :, None]  # (rows, kh, 1)
    kj = (xi * sw)[:, None, None] + (np.arange(kw) * dw)[None, None, :]  # (rows, 1, kw)
    patches = xp[ni[:, None, None], :, ki, kj]  # (rows, kh, kw, C)
    return patches.transpose(0, 3, 1, 2).reshape(len(pick), c * kh * kw), np.stack([ni, yi, xi], axis=1)


def _solve(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ridge least squares with a bias column: returns (features+1, outputs)."""
    a1 = np.concatenate([a, np.ones((a.shape[0], 1), a.dtype)], axis=1).astype(np.float32)
    ata = (a1.T @ a1).astype(np.float64)
    lam = RIDGE * np.trace(ata) / ata.shape[0]
    ata[np.diag_indices_from(ata)] += lam
    return np.linalg.solve(ata, (a1.T @ y.astype(np.float32)).astype(np.float64))


def _layers_to_fit(graph: gs.Graph, analysis: Analysis, keep: dict[int, np.ndarray]) -> list[gs.Node]:
    touched = set(keep)
    names = {s.node for s in analysis.slices if s.role == "in" and touched.intersection(s.layout.spaces)}
    return [n for n in graph.nodes if n.name in names]


def reconstruct(
    graph: gs.Graph, teacher: onnx.ModelProto, analysis: Analysis, keep: dict[int, np.ndarray], x: np.ndarray, seed: int
) -> gs.Graph:
    """Re-fit the layers that read pruned channels (their kept outputs) after a channel cut."""
    layers = _layers_to_fit(graph, analysis, keep)
    out_slices = {s.node: s for s in analysis.slices if s.role == "out"}
    outputs = {n.name: out_slices[n.name].layout.indices(keep) for n in layers if n.name in out_slices}
    return refit(graph, teacher, layers, x, seed, outputs)


def refit(
    graph: gs.Graph,
    teacher: onnx.ModelProto,
    layers: list[gs.Node],
    x: np.ndarray,
    seed: int,
    outputs: dict[str, np.ndarray] | None = None,
) -> gs.Graph:
    """Re-fit `layers` (Conv with group 1, Gemm, MatMul; in topological order) so that each one's
    output, computed from the rewritten network's input, matches the teacher's output of the same
    tensor on the calibration inputs `x`. `outputs[name]`: which of the teacher's output channels
    the layer still produces (all when absent)."""
    layers = [n for n in layers if _fittable(n)]
    if not layers:
        return graph
    outputs = outputs or {}
    rng = np.random.default_rng(seed)
    targets = intermediate_outputs(teacher, x, [n.outputs[0].name for n in layers])
    counts = [_images_for(int(np.prod(targets[n.outputs[0].name].shape[2:])) if n.op == "Conv" else 1,
                          _rows_for(_features(n)), len(x)) for n in layers]
    sources = _sources(export_graph(graph.copy(), infer=False), layers, counts)
    cache: dict[str, np.ndarray] = {}  # inputs of the layers fitted so far, on sources.images[name] samples
    for k, node in enumerate(layers):
        w = node.inputs[1].values
        y_all = targets[node.outputs[0].name]
        rows_wanted = _rows_for(_features(node))
        n_img = counts[k]
        name = node.inputs[0].name
        if name not in cache:
            # run the rewritten network from the inputs of the layers fitted before this one (a fit
            # changes its own layer's output and what follows, never what came before), over the
            # few nodes in between, on as many samples as this input's later readers need
            student = export_graph(graph.copy(), infer=False)  # onnxruntime infers the shapes
            n_run = sources.images[name]
            given = {t: cache[t][:n_run] for t in sources.starts[k]}
            cache[name] = intermediate_outputs(student, x[:n_run], [name], given=given)[name]
        xin = cache[name][:n_img]
        for t in [t for t, last in sources.last_use.items() if last == k]:
            cache.pop(t, None)
        y = y_all[:n_img]
        if node.op == "Conv":
            sampled = _conv_patches(xin, node, w.shape, rng, rows_wanted)
            if sampled is None:
                continue
            rows, where = sampled
            out_idx = outputs.get(node.name, np.arange(y.shape[1]))
            yt = y[where[:, 0], :, where[:, 1], where[:, 2]][:, out_idx]
        else:
            rows = xin.reshape(-1, xin.shape[-1])
            out_idx = outputs.get(node.name, np.arange(y.shape[-1]))
            yt = y.reshape(-1, y.shape[-1])[:, out_idx]
        if rows.shape[0] > rows_wanted:  # fully connected layers: one row per image
            pick = rng.choice(rows.shape[0], rows_wanted, replace=False)
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


def _features(node: gs.Node) -> int:
    """Unknowns per output of a layer's least-squares fit (without the bias)."""
    w = node.inputs[1].values
    if node.op == "Conv":
        return int(np.prod(w.shape[1:]))
    return int(w.shape[1] if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else w.shape[0])


@dataclass(frozen=True)
class _Sources:
    """How `refit` computes each layer's input: `starts[k]`, the inputs of earlier layers it is
    computed from (cached); `images[t]`, on how many samples input t is computed (the most any of
    its readers needs); `last_use[t]`, the last layer whose computation reads t."""

    starts: list[set[str]]
    images: dict[str, int]
    last_use: dict[str, int]


def _sources(model: onnx.ModelProto, layers: list[gs.Node], counts: list[int]) -> _Sources:
    names = [n.inputs[0].name for n in layers]
    starts: list[set[str]] = []
    for k, name in enumerate(names):  # a layer reading an earlier layer's input finds it cached
        starts.append(starts_of(model, [name], set(names[:k])) if name not in names[:k] else set())
    images: dict[str, int] = {}
    last_use: dict[str, int] = {}
    for k in reversed(range(len(layers))):  # readers come after what they read
        name = names[k]
        images[name] = max(images.get(name, 0), counts[k])
        last_use.setdefault(name, k)
        for t in starts[k]:
            images[t] = max(images.get(t, 0), images[name])
            last_use.setdefault(t, k)
    return _Sources(starts, images, last_use)


def _fittable(node: gs.Node) -> bool:
    """Layers `refit` can solve for: Conv with group 1 and explicit pads, Gemm with alpha = beta =
    1, MatMul (a depthwise or grouped conv keeps its weights: each output sees one input group)."""
    if node.op == "Conv":
        return int(node.attrs.get("group", 1)) == 1 and node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET") \
            and len(node.inputs[1].values.shape) == 4
    if node.op == "Gemm":
        return float(node.attrs.get("alpha", 1.0)) == 1.0 and float(node.attrs.get("beta", 1.0)) == 1.0
    return node.op == "MatMul"


def downstream_layers(graph: gs.Graph, tensor_name: str) -> list[gs.Node]:
    """The Conv/Gemm/MatMul layers that read `tensor_name` directly or through ops that only
    activate, pool or reshape it (not through an Add or Concat: there other paths join), in
    topological order."""
    tensor = graph.tensors().get(tensor_name)
    if tensor is None:
        return []
    found, seen, stack = set(), set(), [tensor]
    while stack:
        t = stack.pop()
        for n in t.outputs:
            if id(n) in seen:
                continue
            seen.add(id(n))
            if n.op in LAYER_OPS and n.inputs and n.inputs[0] is t and len(n.inputs) > 1 and isinstance(n.inputs[1], gs.Constant):
                found.add(n.name)
            elif n.op in REFIT_PASS_THROUGH_OPS:
                stack.extend(n.outputs)
    return [n for n in graph.nodes if n.name in found]


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
