"""The evaluator: applies a plan to a copy of the teacher and measures the student in onnxruntime.

Accuracy is top-1 on a fixed validation subset against its labels, or top-1 agreement with the
teacher when the data has no labels. MACs and parameters are counted on the rewritten model,
size is parameter bytes at each layer's bit width (search/metrics.py), latency (optional, noisy)
is onnxruntime's batch-1 median on this machine. Results are cached by the plan's canonical JSON.
A plan that cannot be applied or run gives `Metrics.infeasible(...)`, never an exception: the
search records it and moves on.

Candidates are cheap because `prune_channels` refits the next layers by least squares on the
calibration inputs (no fine-tuning). Everything runs single-threaded by default (torch, which the
refit uses, and onnxruntime), so that a process pool of N workers uses N cores and a result does
not depend on the number of threads.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import onnx

from onnxcompress.compiler.cost import model_cost
from onnxcompress.compiler.data import Dataset
from onnxcompress.compiler.metrics import predicted_classes, top1
from onnxcompress.compiler.runtime import make_session, measure_latency, run_batched
from onnxcompress.search.metrics import Cost, Metrics

PlanLike = Any  # a Plan, or its JSON ({"passes": [...]})


def plan_to_json(plan: PlanLike) -> dict[str, Any]:
    """The JSON form of a plan; a Plan object is converted, a dict is taken as it is."""
    if hasattr(plan, "to_json") and hasattr(plan, "steps"):
        return plan.to_json()
    if isinstance(plan, Mapping):
        return dict(plan)
    if isinstance(plan, list):
        return {"passes": list(plan)}
    raise TypeError(f"not a plan: {type(plan).__name__}")


def plan_key(plan: PlanLike) -> str:
    """Canonical JSON of a plan (the cache key): parsed and re-serialised when the passes know
    it, so that equal plans written differently share one entry."""
    obj = plan_to_json(plan)
    try:
        from onnxcompress.passes import Plan

        obj = Plan.from_json(obj).to_json()
    except Exception:
        pass  # an unknown/malformed plan is keyed by its own text; evaluate() reports the error
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def plan_bits(plan: Mapping[str, Any], quantizable: tuple[str, ...]) -> dict[str, int]:
    """Bit width per layer that the plan's quantize steps ask for."""
    bits: dict[str, int] = {}
    for step in plan.get("passes", []):
        if not isinstance(step, Mapping) or step.get("pass") != "quantize":
            continue
        if isinstance(step.get("nodes"), Mapping):
            bits.update({str(n): int(b) for n, b in step["nodes"].items()})
        elif "node" in step and "bits" in step:
            bits[str(step["node"])] = int(step["bits"])
        elif "bits" in step:
            bits.update({n: int(step["bits"]) for n in quantizable})
    return bits


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` for the block, then restored. (torch's OpenMP
    pool spins: with 2 threads on a busy 2-core machine the refit's im2col runs ~10x slower.)"""
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@dataclass(frozen=True, eq=False)
class EvaluatorSpec:
    """Everything needed to build an Evaluator: what a worker receives once (pool initializer,
    Ray object store). Arrays are float32 model inputs; `val_y` None = agreement with teacher."""

    teacher: bytes
    val_x: np.ndarray
    val_y: np.ndarray | None
    calibration: np.ndarray
    seed: int = 0
    measure_latency: bool = False
    batch_size: int = 256
    threads: int = 1
    providers: tuple[str, ...] = ("CPUExecutionProvider",)  # onnxruntime's, for accuracy (compiler/device.py)


class Evaluator:
    """Evaluates plans on a canonical teacher. Holds its cache; otherwise stateless."""

    def __init__(
        self,
        teacher: onnx.ModelProto,
        val: Dataset,
        calibration: np.ndarray,
        seed: int = 0,
        measure_latency: bool = False,
        batch_size: int = 256,
        threads: int = 1,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
    ) -> None:
        self.teacher = teacher
        self.val = val
        self.calibration = np.ascontiguousarray(calibration, dtype=np.float32)
        self.seed = int(seed)
        self.measure_latency = bool(measure_latency)
        self.batch_size = int(batch_size)
        self.threads = int(threads)
        self.providers = tuple(providers)
        self._cache: dict[str, Metrics] = {}
        self._space = None
        self.quantizable = self._quantizable()
        logits = self._logits(teacher)
        self._reference = val.y if val.y is not None else predicted_classes(logits)
        self.teacher_metrics = self._measure(teacher, logits, {})
        self.evaluations = 0  # evaluator runs (cache misses)

    @classmethod
    def from_spec(cls, spec: EvaluatorSpec) -> "Evaluator":
        return cls(
            onnx.ModelProto.FromString(spec.teacher),
            Dataset(x=np.asarray(spec.val_x, dtype=np.float32), y=None if spec.val_y is None else np.asarray(spec.val_y, dtype=np.int64)),
            spec.calibration,
            seed=spec.seed,
            measure_latency=spec.measure_latency,
            batch_size=spec.batch_size,
            threads=spec.threads,
            providers=spec.providers,
        )

    def spec(self) -> EvaluatorSpec:
        return EvaluatorSpec(
            teacher=self.teacher.SerializeToString(),
            val_x=np.asarray(self.val.x),
            val_y=None if self.val.y is None else np.asarray(self.val.y),
            calibration=self.calibration,
            seed=self.seed,
            measure_latency=self.measure_latency,
            batch_size=self.batch_size,
            threads=self.threads,
            providers=self.providers,
        )

    # -- measuring ---------------------------------------------------------------------------

    def _quantizable(self) -> tuple[str, ...]:
        from onnxcompress.compiler.ir import analyze
        from onnxcompress.compiler.onnx_io import import_graph

        return analyze(import_graph(self.teacher)).quantizable

    def _logits(self, model: onnx.ModelProto) -> np.ndarray:
        session = make_session(model, threads=self.threads, providers=self.providers)
        out = run_batched(session, np.asarray(self.val.x), batch_size=self.batch_size)
        return out.reshape(out.shape[0], -1)

    def _measure(self, model: onnx.ModelProto, logits: np.ndarray, bits: Mapping[str, int]) -> Metrics:
        cost = model_cost(model)
        latency = measure_latency(model, np.asarray(self.val.x[:32]), threads=self.threads).batch1 if self.measure_latency else None
        accuracy = top1(logits, self._reference) if len(logits) else 0.0
        return Metrics(
            accuracy=accuracy,
            macs=int(cost.macs),
            params=int(cost.params),
            size_bytes=model.ByteSize(),  # the file, as reports and size targets count it
            latency_ms=latency,
        )

    def evaluate(self, plan: PlanLike) -> Metrics:
        """Metrics of the teacher rewritten by `plan` (cached by the plan's canonical JSON)."""
        key = plan_key(plan)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        metrics = self._evaluate(json.loads(key))
        self._cache[key] = metrics
        self.evaluations += 1
        return metrics

    def _evaluate(self, obj: dict[str, Any]) -> Metrics:
        from onnxcompress.passes import Plan, apply_plan

        try:
            plan = Plan.from_json(obj)
            with torch_threads(self.threads):
                student = apply_plan(self.teacher, plan, calibration=self.calibration, seed=self.seed)
            logits = self._logits(student)
            return self._measure(student, logits, plan_bits(obj, self.quantizable))
        except Exception as exc:  # any failure of a candidate is a result, not a crash
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return Metrics.infeasible(f"{type(exc).__name__}: {first[:300]}")

    # -- prediction --------------------------------------------------------------------------

    @property
    def space(self):
        """The teacher's SearchSpace (built on first use)."""
        if self._space is None:
            from onnxcompress.search.space import SearchSpace

            self._space = SearchSpace(self.teacher)
        return self._space

    def predict_cost(self, plan: PlanLike) -> Cost:
        """MACs, parameters and size of the plan's student from SearchCost, without rewriting."""
        return self.space.predict(plan_to_json(plan))

    def cached(self) -> dict[str, Metrics]:
        return dict(self._cache)
