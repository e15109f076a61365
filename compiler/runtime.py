"""onnxruntime helpers shared by the evaluator, verification and benchmarks.

One place creates sessions (single-threaded intra-op by default so that latency ratios measured on
a noisy 2-core machine are comparable, and so that a process pool does not oversubscribe cores).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxcompress.compiler.onnx_io import is_quantized

# onnxruntime's severity levels: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
LOG_ERRORS_ONLY = 3


def quiet_onnxruntime() -> None:
    """Only errors from onnxruntime's own logger. Its warnings ("UnsqueezeElimination cannot
    remove node ...", "Removing initializer ...") are about its graph optimiser, not the user's
    model, and sessions we do not create (onnx-graphsurgeon's constant folding) log through the
    default logger, which SessionOptions.log_severity_level does not reach."""
    ort.set_default_logger_severity(LOG_ERRORS_ONLY)


quiet_onnxruntime()


def make_session(model: onnx.ModelProto | bytes, threads: int = 1, optimize: bool = True,
                 providers: Sequence[str] = ("CPUExecutionProvider",), spin: bool = True) -> ort.InferenceSession:
    """An onnxruntime session for an in-memory model, on the CPU unless `providers` says otherwise
    (compiler/device.py). spin=False: idle intra-op threads sleep instead of busy-waiting (for a
    session that takes turns with PyTorch on the same cores)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = LOG_ERRORS_ONLY
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, sess_options=opts, providers=list(providers))


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


def _walk_back(model: onnx.ModelProto, names: Sequence[str], given: Collection[str] = ()) -> tuple[set[int], set[str]]:
    """Positions of the nodes the named tensors depend on, stopping at `given` tensors, and every
    tensor reached (given ones included)."""
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    needed, stack, keep = set(names), [n for n in names if n not in given], set()
    while stack:
        index = producer.get(stack.pop())
        if index is None or index in keep:
            continue
        keep.add(index)
        for t in nodes[index].input:
            if t and t not in needed:
                needed.add(t)
                if t not in given:
                    stack.append(t)
    return keep, needed


def starts_of(model: onnx.ModelProto, names: Sequence[str], given: Collection[str]) -> set[str]:
    """The `given` tensors that computing `names` reads (the rest comes from the model's input)."""
    _, needed = _walk_back(model, names, given)
    return {t for t in needed if t in given and t not in names}


def prefix_model(model: onnx.ModelProto, names: Sequence[str], given: Collection[str] = ()) -> onnx.ModelProto:
    """A copy of `model` whose outputs are exactly the named tensors, without the nodes they do
    not depend on: onnxruntime runs every node of a graph, so a model cut after the last tensor
    wanted saves the rest of the network (the layer-by-layer refits read early tensors). Tensors
    in `given` become inputs (their values are fed instead of computed), and the model's own
    input stays one only when the named tensors still need it."""
    keep, needed = _walk_back(model, names, given)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.node[:]
    m.graph.node.extend(n for i, n in enumerate(model.graph.node) if i in keep)
    del m.graph.output[:]
    m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    inputs = [i for i in model.graph.input if i.name in needed and i.name not in given]
    inputs += [onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in sorted(needed) if t in given]
    del m.graph.input[:]
    m.graph.input.extend(inputs)
    inits = [i for i in model.graph.initializer if i.name in needed and i.name not in given]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    return m


def intermediate_outputs(
    model: onnx.ModelProto, x: np.ndarray | None, names: list[str], batch_size: int = 128,
    given: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Values of the named tensors for inputs `x`, computed by onnxruntime on the part of the
    network they depend on; `given` tensors (values for the same samples) are fed, not computed
    (`x` may then be None when the named tensors do not need the network's input)."""
    if not names:
        return {}
    given = given or {}
    # optimized (fused, NCHWc) kernels: 1.6x faster refits of a MobileNetV2 than the plain ones;
    # onnxruntime never fuses away a graph output. A QDQ graph runs unoptimized, so that the
    # tensors asked for keep their float (DQ -> op -> Q) values instead of integer-kernel ones.
    session = make_session(prefix_model(model, names, given), optimize=not is_quantized(model))
    feeds: dict[str, np.ndarray] = {}
    for i in session.get_inputs():
        feeds[i.name] = given[i.name] if i.name in given else x  # type: ignore[assignment]
    count = len(next(iter(feeds.values()))) if feeds else 0
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, count, batch_size):
        outs = session.run(names, {k: v[i : i + batch_size] for k, v in feeds.items()})
        for n, o in zip(names, outs):
            parts[n].append(o)
    return {n: np.concatenate(v, axis=0) for n, v in parts.items()}


def _time_ms(session, feed: dict[str, np.ndarray], runs: int, cpu: list[float] | None = None) -> float:  # noqa: ANN001
    """Fastest wall time of `runs` runs (ms); appends the fastest CPU time of this thread to
    `cpu` (single-threaded onnxruntime computes on the calling thread, so that is the inference's
    CPU time, which time spent preempted by other processes does not inflate)."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.thread_time()
        session.run(None, feed)
        best_cpu = min(best_cpu, time.thread_time() - c0)
        best = min(best, time.perf_counter() - t0)
    if cpu is not None:
        cpu.append(best_cpu * 1000.0)
    return best * 1000.0


@dataclass(frozen=True)
class PairedTimes:
    """Raw timings of `paired_times` (ms): per variant and round, the base's time right before
    the variant's, at batch 1 and batch 32, as wall time and as CPU time of the inference
    thread."""

    base1: tuple[tuple[float, ...], ...]  # [variant][round]
    base32: tuple[tuple[float, ...], ...]
    variant1: tuple[tuple[float, ...], ...]
    variant32: tuple[tuple[float, ...], ...]
    base1_cpu: tuple[tuple[float, ...], ...] = ()  # CPU time of the calling thread
    base32_cpu: tuple[tuple[float, ...], ...] = ()
    variant1_cpu: tuple[tuple[float, ...], ...] = ()
    variant32_cpu: tuple[tuple[float, ...], ...] = ()

    def medians(self, cpu: bool = False) -> tuple[Latency, list[Latency]]:
        """Base median, and per variant the median over rounds of its ratio to the base run
        just before it, times the base median. `cpu`: of the inference thread's CPU time
        instead of wall time (preemption by other jobs does not inflate it; cache and memory
        bandwidth sharing still do)."""
        base1, base32, var1, var32 = (
            (self.base1_cpu, self.base32_cpu, self.variant1_cpu, self.variant32_cpu) if cpu else (self.base1, self.base32, self.variant1, self.variant32)
        )
        m1 = float(np.median([t for row in base1 for t in row]))
        m32 = float(np.median([t for row in base32 for t in row]))
        out = []
        for b1, b32, v1, v32 in zip(base1, base32, var1, var32):
            r1 = float(np.median(np.asarray(v1) / np.asarray(b1)))
            r32 = float(np.median(np.asarray(v32) / np.asarray(b32)))
            out.append(Latency(m1 * r1, m32 * r32))
        return Latency(m1, m32), out

    def spread32(self) -> list[float]:
        """Per variant: half the interquartile range of its batch-32 ratios (how far apart the
        middle half of the rounds lie; compare differences between variants with it)."""
        out = []
        for b32, v32 in zip(self.base32, self.variant32):
            q1, q3 = np.percentile(np.asarray(v32) / np.asarray(b32), [25, 75])
            out.append(float(q3 - q1) / 2)
        return out


def paired_times(base: onnx.ModelProto, variants: Sequence[onnx.ModelProto], sample: np.ndarray, rounds: int = 9, seed: int = 0) -> PairedTimes:
    """Times `base` and each variant in pairs: every round times the base right before each
    variant. On a shared 2-core machine load drifts within seconds; pairing cancels the drift
    that block-wise timing (all runs of one model, then the next) turns into differences of
    several percent between identical models. Each turn keeps the fastest of its runs (5 at
    batch 1, 3 at batch 32): a run that another process preempted is slower, never faster.
    The variants take their turns in a new (seeded) order every round."""
    sessions = [make_session(m) for m in [base, *variants]]
    name = sessions[0].get_inputs()[0].name
    one = {name: np.ascontiguousarray(sample[:1], dtype=np.float32)}
    x32 = sample[:32] if len(sample) >= 32 else np.concatenate([sample[:1]] * 32, axis=0)
    b32 = {name: np.ascontiguousarray(x32, dtype=np.float32)}
    for s in sessions:  # warm-up: allocations, prepacking
        s.run(None, b32)
        s.run(None, one)
    n = max(1, len(variants))
    base1: list[list[float]] = [[] for _ in range(n)]
    base32: list[list[float]] = [[] for _ in range(n)]
    var1: list[list[float]] = [[] for _ in variants]
    var32: list[list[float]] = [[] for _ in variants]
    base1_cpu: list[list[float]] = [[] for _ in range(n)]
    base32_cpu: list[list[float]] = [[] for _ in range(n)]
    var1_cpu: list[list[float]] = [[] for _ in variants]
    var32_cpu: list[list[float]] = [[] for _ in variants]
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        for i in rng.permutation(n):
            base1[i].append(_time_ms(sessions[0], one, 5, base1_cpu[i]))
            base32[i].append(_time_ms(sessions[0], b32, 3, base32_cpu[i]))
            if variants:
                var1[i].append(_time_ms(sessions[i + 1], one, 5, var1_cpu[i]))
                var32[i].append(_time_ms(sessions[i + 1], b32, 3, var32_cpu[i]))
    t = lambda rows: tuple(tuple(r) for r in rows)  # noqa: E731
    return PairedTimes(t(base1), t(base32), t(var1), t(var32), t(base1_cpu), t(base32_cpu), t(var1_cpu), t(var32_cpu))


def paired_latency(
    base: onnx.ModelProto, variants: Sequence[onnx.ModelProto], sample: np.ndarray, rounds: int = 9, cpu: bool = False
) -> tuple[Latency, list[Latency]]:
    """Latency of `base` and of each variant (`paired_times`, then `PairedTimes.medians`): a
    variant's latency is the median of its ratios to the base run just before it, times the
    base's median. Compare ratios; absolute times on this machine mean little."""
    return paired_times(base, variants, sample, rounds).medians(cpu=cpu)


def compare_latency(models: list[onnx.ModelProto], sample: np.ndarray, rounds: int = 7, cpu: bool = True) -> list[Latency]:
    """Latencies of several models measured side by side in one run: `models[0]` is the
    reference, each other model is timed in pairs with it (`paired_times`), and its latency is
    its median ratio to the reference times the reference's median. `cpu`: CPU time of the
    (single) inference thread rather than wall time; on a loaded machine wall-time ratios of two
    identical models drift by 10-20 %, CPU-time ratios by a few %. Use ratios, never absolute
    times."""
    base, others = paired_latency(models[0], models[1:], sample, rounds=rounds, cpu=cpu)
    return [base, *others]
