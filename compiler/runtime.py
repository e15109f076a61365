"""onnxruntime helpers shared by the evaluator, verification and benchmarks.

One place creates sessions (single-threaded intra-op by default so that latency ratios measured on
a noisy 2-core machine are comparable, and so that a process pool does not oversubscribe cores).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort


def make_session(model: onnx.ModelProto | bytes, threads: int = 1, optimize: bool = True) -> ort.InferenceSession:
    """An onnxruntime CPU session for an in-memory model."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def run_batched(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 256, output: int = 0) -> np.ndarray:
    """Runs `x` through the session in batches and concatenates one output."""
    name = session.get_inputs()[0].name
    out_name = session.get_outputs()[output].name
    parts = [session.run([out_name], {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(parts, axis=0) if parts else np.zeros((0,), np.float32)


@dataclass(frozen=True)
class Latency:
    """Median wall time of one forward pass, in milliseconds, at batch 1 and batch 32."""

    batch1: float
    batch32: float

    def to_json(self) -> dict[str, float]:
        return {"batch1": round(self.batch1, 4), "batch32": round(self.batch32, 4)}


def _median_ms(session: ort.InferenceSession, feed: dict[str, np.ndarray], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)


def measure_latency(
    model: onnx.ModelProto, sample: np.ndarray, repeats: int = 30, warmup: int = 5, threads: int = 1
) -> Latency:
    """Median onnxruntime latency at batch 1 and 32. `sample` is one preprocessed input batch
    (any size >= 1); it is tiled to 32. Absolute times are noisy here: compare ratios measured in
    one run, never an absolute time in a test."""
    session = make_session(model, threads=threads)
    name = session.get_inputs()[0].name
    one = sample[:1]
    b32 = np.concatenate([one] * 32, axis=0) if len(sample) < 32 else sample[:32]
    b1 = _median_ms(session, {name: one}, repeats, warmup)
    b32_ms = _median_ms(session, {name: b32}, max(5, repeats // 3), max(1, warmup // 2))
    return Latency(batch1=b1, batch32=b32_ms)


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the named intermediate tensors."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for name in names:
        if name not in existing:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return m


def intermediate_outputs(model: onnx.ModelProto, x: np.ndarray, names: list[str], batch_size: int = 128) -> dict[str, np.ndarray]:
    """Values of the named tensors for inputs `x`, computed by onnxruntime."""
    if not names:
        return {}
    session = make_session(with_outputs(model, names), optimize=False)
    in_name = session.get_inputs()[0].name
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(x), batch_size):
        outs = session.run(names, {in_name: x[i : i + batch_size]})
        for n, o in zip(names, outs):
            parts[n].append(o)
    return {n: np.concatenate(v, axis=0) for n, v in parts.items()}


def compare_latency(models: list[onnx.ModelProto], sample: np.ndarray, rounds: int = 5, repeats: int = 10) -> list[Latency]:
    """Latencies of several models measured side by side: the models take turns for `rounds`
    rounds and each keeps its median, so background load on a noisy machine hits all of them
    alike. Use ratios of the results, never absolute times."""
    sessions = [make_session(m) for m in models]
    one = sample[:1]
    b32 = np.concatenate([one] * 32, axis=0) if len(sample) < 32 else sample[:32]
    b1_times: list[list[float]] = [[] for _ in models]
    b32_times: list[list[float]] = [[] for _ in models]
    for s in sessions:  # warm-up
        name = s.get_inputs()[0].name
        for _ in range(3):
            s.run(None, {name: b32})
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            name = s.get_inputs()[0].name
            b1_times[i].append(_median_ms(s, {name: one}, repeats, 1))
            b32_times[i].append(_median_ms(s, {name: b32}, max(3, repeats // 3), 1))
    return [Latency(float(np.median(a)), float(np.median(b))) for a, b in zip(b1_times, b32_times)]
