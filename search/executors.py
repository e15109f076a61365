"""Executors run evaluations: in-process, a local process pool, or Ray.

Every executor keeps the results it has seen (keyed by the plan's canonical JSON) and sends only
new plans out, in order; results come back in the order of the plans, so a search gives the same
result whatever the executor and number of workers (the evaluator is deterministic for a seed).

Workers receive the teacher bytes and the data once (the pool's initializer / Ray's object
store), never per task, and run onnxruntime and torch single-threaded so N workers use N cores.
Ray is an optional extra (`pip install ray`), imported only when asked for.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

from onnxcompress.compiler.errors import UsageError
from onnxcompress.search.evaluator import Evaluator, EvaluatorSpec, PlanLike, plan_key, plan_to_json
from onnxcompress.search.metrics import Metrics

KINDS = ("local", "ray")
_SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class PlanEvaluator(Protocol):
    """What an InProcessExecutor wraps: the real Evaluator, or a fake one in tests."""

    teacher_metrics: Metrics

    def evaluate(self, plan: PlanLike) -> Metrics: ...


@dataclass(frozen=True)
class ExecutorConfig:
    """`kind` local|ray; `workers` 1 = in-process (local) ; `ray_address` None = start a local Ray."""

    kind: str = "local"
    workers: int = 1
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"unknown executor '{self.kind}'; choose one of {', '.join(KINDS)}")
        if self.workers < 1:
            raise UsageError(f"workers must be >= 1, got {self.workers}")


class Executor:
    """Base: the cache and the ordering; subclasses implement `_run` for new plans."""

    teacher_metrics: Metrics

    def __init__(self) -> None:
        self._cache: dict[str, Metrics] = {}
        self.evaluations = 0  # plans actually evaluated (cache misses)

    def evaluate_many(self, plans: Sequence[PlanLike]) -> list[Metrics]:
        keys = [plan_key(p) for p in plans]
        todo: dict[str, PlanLike] = {}
        for k, p in zip(keys, plans):
            if k not in self._cache and k not in todo:
                todo[k] = plan_to_json(p)
        if todo:
            for k, m in zip(todo, self._run(list(todo.values()))):
                self._cache[k] = m
            self.evaluations += len(todo)
        return [self._cache[k] for k in keys]

    def evaluate(self, plan: PlanLike) -> Metrics:
        return self.evaluate_many([plan])[0]

    def known(self) -> dict[str, Metrics]:
        """Every result so far (for checkpoints)."""
        return dict(self._cache)

    def preload(self, results: dict[str, Metrics]) -> None:
        """Results restored from a checkpoint: they are not evaluated again."""
        self._cache.update(results)

    def _run(self, plans: list[dict]) -> list[Metrics]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcessExecutor(Executor):
    def __init__(self, evaluator: PlanEvaluator) -> None:
        super().__init__()
        self.evaluator = evaluator
        self.teacher_metrics = evaluator.teacher_metrics

    def _run(self, plans: list[dict]) -> list[Metrics]:
        return [self.evaluator.evaluate(p) for p in plans]


# ---------------------------------------------------------------------------------------------
# local process pool
# ---------------------------------------------------------------------------------------------

# The one piece of module state: each *worker process* builds its Evaluator once in the pool's
# initializer and keeps it here. The parent process never sets it.
_WORKER_EVALUATOR: Evaluator | None = None


def _init_worker(spec: EvaluatorSpec) -> None:
    global _WORKER_EVALUATOR
    import torch

    torch.set_num_threads(1)
    _WORKER_EVALUATOR = Evaluator.from_spec(spec)


def _evaluate_in_worker(plan: dict) -> dict:
    assert _WORKER_EVALUATOR is not None, "pool worker used before its initializer ran"
    return _WORKER_EVALUATOR.evaluate(plan).to_json()


def _teacher_in_worker(_: int) -> dict:
    assert _WORKER_EVALUATOR is not None
    return _WORKER_EVALUATOR.teacher_metrics.to_json()


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """BLAS/OpenMP read their thread counts from the environment when a process starts; the
    spawned workers inherit these values. The parent's own libraries are already initialised, so
    it is unaffected; the variables are restored right after the workers start."""
    saved = {k: os.environ.get(k) for k in _SINGLE_THREAD_ENV}
    os.environ.update(_SINGLE_THREAD_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class PoolExecutor(Executor):
    """A local pool of `workers` spawned processes (spawn: no fork of a threaded parent)."""

    def __init__(self, spec: EvaluatorSpec, workers: int) -> None:
        super().__init__()
        ctx = mp.get_context("spawn")
        with _single_threaded_children():
            # multiprocessing.Pool starts every worker now (and restarts one with the same
            # initializer if it dies), so the environment above is what they all see
            self._pool = ctx.Pool(processes=workers, initializer=_init_worker, initargs=(spec,))
        self.workers = workers
        self.teacher_metrics = Metrics.from_json(self._pool.apply(_teacher_in_worker, (0,)))

    def _run(self, plans: list[dict]) -> list[Metrics]:
        return [Metrics.from_json(m) for m in self._pool.imap(_evaluate_in_worker, plans, chunksize=1)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: install it with `pip install 'onnxcompress[ray]'` (or `pip install ray`)") from None
    return ray


class _RayWorker:
    """A Ray actor holding one Evaluator (declared remote lazily, so Ray stays optional)."""

    def __init__(self, spec: EvaluatorSpec) -> None:
        import torch

        torch.set_num_threads(1)
        self.evaluator = Evaluator.from_spec(spec)

    def evaluate(self, plan: dict) -> dict:
        return self.evaluator.evaluate(plan).to_json()

    def teacher(self) -> dict:
        return self.evaluator.teacher_metrics.to_json()


class RayExecutor(Executor):
    """`workers` Ray actors (one CPU each). Connects to `address`, or starts a local Ray instance
    when there is none (and shuts down only what it started)."""

    def __init__(self, spec: EvaluatorSpec, workers: int, address: str | None = None) -> None:
        super().__init__()
        ray = _import_ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs = {"address": address} if address else {"num_cpus": workers}
            ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, **kwargs)
            self._started = True
        remote = ray.remote(num_cpus=1)(_RayWorker)
        spec_ref = ray.put(spec)  # the teacher and the data go to the object store once
        # Ray sets OMP_NUM_THREADS to an actor's num_cpus (1), which BLAS and torch honour
        self._actors = [remote.remote(spec_ref) for _ in range(workers)]
        self.workers = workers
        self.teacher_metrics = Metrics.from_json(ray.get(self._actors[0].teacher.remote()))

    def _run(self, plans: list[dict]) -> list[Metrics]:
        from ray.util import ActorPool

        pool = ActorPool(self._actors)
        return [Metrics.from_json(m) for m in pool.map(lambda actor, plan: actor.evaluate.remote(plan), plans)]

    def close(self) -> None:
        ray = self._ray
        for a in getattr(self, "_actors", []):
            with contextlib.suppress(Exception):
                ray.kill(a)
        self._actors = []
        if self._started and ray.is_initialized():
            ray.shutdown()
            self._started = False


def make_executor(config: ExecutorConfig, spec: EvaluatorSpec) -> Executor:
    """The executor for a config: in-process for local with 1 worker, else a pool or Ray."""
    if config.kind == "ray":
        return RayExecutor(spec, config.workers, config.ray_address)
    if config.workers == 1:
        return InProcessExecutor(Evaluator.from_spec(spec))
    return PoolExecutor(spec, config.workers)
