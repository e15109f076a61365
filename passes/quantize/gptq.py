"""GPTQ rounding for int4 weights (Frantar et al., 2023, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers"), applied to Conv / Gemm / MatMul layers.

Why: rounding each int4 weight to its nearest level throws away too much on small CNNs (the
MLPerf Tiny ResNet-8 loses 23 points of top-1 with all convolutions at int4 round-to-nearest).
GPTQ quantizes a layer's input columns one at a time and spreads each column's rounding error
over the columns not yet quantized, weighted by the inverse of the layer-input Hessian
H = X^T X, so the layer's *output* on real inputs moves as little as possible. With a few
hundred calibration images the same ResNet-8 stays within a point of fp32. onnxruntime's
quantizer has no int4 path for Conv weights, so this is written here (numpy).

Per-channel symmetric scales (max |w| / 7) are fixed first; GPTQ chooses the integers. Columns
are visited in decreasing order of H's diagonal ("act order"), with 1% dampening.

The same pass over the calibration data also yields the mean layer input, for bias correction
of int8 and int4 layers (`bias_shift`).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

# rows of im2col (output positions) folded into H per calibration batch: a few times K is plenty
# for a K x K matrix, and H's cost (rows x K^2) dominates the pass on a busy 2-core machine
_MIN_ROWS_PER_BATCH = 1024
_ROWS_PER_INPUT = 4


def supports(node: gs.Node) -> bool:
    """GPTQ applies to ungrouped 2-D convolutions and to Gemm / MatMul with a 2-D weight."""
    w = node.inputs[1]
    if not isinstance(w, gs.Constant):
        return False
    if node.op == "Conv":
        return len(w.shape) == 4 and int(node.attrs.get("group", 1)) == 1
    if node.op == "Gemm":
        return len(w.shape) == 2 and not int(node.attrs.get("transA", 0))
    return node.op == "MatMul" and len(w.shape) == 2


def weight_rows(node: gs.Node, w: np.ndarray) -> np.ndarray:
    """The weight as (output channels, inputs), the matrix GPTQ works on."""
    if node.op == "Conv":
        return w.reshape(w.shape[0], -1)
    if node.op == "Gemm" and int(node.attrs.get("transB", 0)):
        return w
    return w.T


def rows_to_weight(node: gs.Node, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if node.op == "Conv":
        return rows.reshape(shape)
    if node.op == "Gemm" and int(node.attrs.get("transB", 0)):
        return rows
    return np.ascontiguousarray(rows.T)


def _conv_pads(node: gs.Node, in_hw: tuple[int, int], kernel: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) padding of a Conv, resolving auto_pad."""
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    strides = list(node.attrs.get("strides", [1, 1]))
    dil = list(node.attrs.get("dilations", [1, 1]))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0) for size, k, s, d in zip(in_hw, kernel, strides, dil)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        begin, end = (small, big) if auto == "SAME_UPPER" else (big, small)
        return begin[0], begin[1], end[0], end[1]
    if auto == "VALID":
        return 0, 0, 0, 0
    p = list(node.attrs.get("pads", [0, 0, 0, 0]))
    return p[0], p[1], p[2], p[3]


class LayerInputs:
    """Statistics of one layer's inputs over calibration batches, from one pass of the float
    model: H = X^T X of the im2col rows (for GPTQ) and the mean im2col row, of the float input
    and of the input as the quantized model sees it (fake-quantized by `input_quant`, for bias
    correction)."""

    def __init__(self, node: gs.Node, hessian: bool, input_quant: tuple[float, int] | None = None, seed: int = 0) -> None:
        self.node = node
        w = np.asarray(node.inputs[1].values)
        self._kernel = (int(w.shape[2]), int(w.shape[3])) if node.op == "Conv" else (0, 0)
        k = int(np.prod(w.shape[1:])) if node.op == "Conv" else weight_rows(node, w).shape[1]
        self.hessian = np.zeros((k, k), dtype=np.float64) if hessian else None
        self._sum = np.zeros(k, dtype=np.float64)
        self._sum_quant = np.zeros(k, dtype=np.float64)
        self.rows = 0
        self._input_quant = input_quant
        self._max_rows = max(_MIN_ROWS_PER_BATCH, _ROWS_PER_INPUT * k)
        self._rng = np.random.default_rng(seed)

    @property
    def mean(self) -> np.ndarray:
        return self._sum / max(self.rows, 1)

    @property
    def mean_quantized(self) -> np.ndarray:
        return self._sum_quant / max(self.rows, 1)

    def _pick(self, total: int) -> np.ndarray:
        if total <= self._max_rows:
            return np.arange(total)
        return np.sort(self._rng.choice(total, self._max_rows, replace=False))

    def _columns(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        """The same sampled rows of the layer's im2col matrix for each array in `xs`: only the
        sampled output positions are gathered, so this never builds the full im2col."""
        x0 = xs[0]
        if self.node.op != "Conv":
            flat = [x.reshape(-1, x.shape[-1]) for x in xs]
            pick = self._pick(flat[0].shape[0])
            return [f[pick] for f in flat]
        kh, kw = self._kernel
        sh, sw = (int(v) for v in self.node.attrs.get("strides", [1, 1]))
        dh, dw = (int(v) for v in self.node.attrs.get("dilations", [1, 1]))
        top, left, bottom, right = _conv_pads(self.node, (x0.shape[2], x0.shape[3]), self._kernel)
        out_h = (x0.shape[2] + top + bottom - (kh - 1) * dh - 1) // sh + 1
        out_w = (x0.shape[3] + left + right - (kw - 1) * dw - 1) // sw + 1
        pick = self._pick(x0.shape[0] * out_h * out_w)
        n, rest = np.divmod(pick, out_h * out_w)
        oy, ox = np.divmod(rest, out_w)
        out = []
        for x in xs:
            xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
            # (rows, C, kh, kw): the same column order as the weight's (C, kh, kw) after reshape
            patches = np.empty((len(pick), x.shape[1], kh, kw), dtype=np.float32)
            for ky in range(kh):
                for kx in range(kw):
                    patches[:, :, ky, kx] = xp[n, :, oy * sh + ky * dh, ox * sw + kx * dw]
            out.append(patches.reshape(len(pick), -1))
        return out

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        xs = [x]
        if self._input_quant is not None:
            scale, zp = self._input_quant
            xs.append(((np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale).astype(np.float32))
        cols = self._columns(xs)
        if self.hessian is not None:
            self.hessian += (cols[0].T @ cols[0]).astype(np.float64)  # fp32 product per batch, fp64 sum
        self._sum += cols[0].sum(axis=0, dtype=np.float64)
        self._sum_quant += cols[-1].sum(axis=0, dtype=np.float64)
        self.rows += int(cols[0].shape[0])


def supports_statistics(node: gs.Node) -> bool:
    """Layers whose inputs `LayerInputs` can turn into im2col rows (= GPTQ's layers)."""
    return supports(node)


def bias_shift(rows: np.ndarray, quantized_rows: np.ndarray, inputs: LayerInputs) -> np.ndarray:
    """Per output channel, how much the quantized layer's mean output falls short of the float
    layer's on the calibration data (to be added to the bias): W m - W_q m_q, with m the mean
    im2col row of the float input and m_q that of the input the quantized model sees. This is
    bias correction (Nagel et al., 2019, "Data-Free Quantization"; NNCF's fast bias correction
    computes the same from layer outputs): rounding errors that do not average to zero over a
    channel's inputs shift its output, and the next layers see that shift."""
    return rows.astype(np.float64) @ inputs.mean - quantized_rows.astype(np.float64) @ inputs.mean_quantized


def gptq_round(rows: np.ndarray, hessian: np.ndarray, scale: np.ndarray, qmax: int, damp: float = 0.01, block: int = 128) -> np.ndarray:
    """Integers in [-qmax, qmax] for `rows` (channels x inputs) at per-channel `scale`, chosen by
    GPTQ against the input Hessian. Returns int8 storage of the same shape."""
    w = rows.astype(np.float64).copy()
    h = hessian.astype(np.float64).copy()
    k = w.shape[1]
    dead = np.diag(h) == 0  # inputs that are always zero: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = np.argsort(-np.diag(h), kind="stable")
    w = w[:, perm]
    h = h[np.ix_(perm, perm)]
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    try:
        hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper Cholesky factor of H^-1
    except np.linalg.LinAlgError:  # numerically singular even after dampening: plain rounding
        return np.clip(np.round(rows / scale[:, None]), -qmax, qmax).astype(np.int8)
    s = scale.astype(np.float64)
    q = np.zeros_like(w)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            qi = np.clip(np.round(col / s), -qmax, qmax)
            q[:, i1 + i] = qi
            err = (col - qi * s) / h1[i, i]
            w1[:, i:] -= np.outer(err, h1[i, i:])
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return q[:, np.argsort(perm)].astype(np.int8)
