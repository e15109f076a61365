"""Executors give the same results as in-process evaluation, in order, for a fixed seed."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from onnxcompress.compiler.data import Dataset
from onnxcompress.errors import UsageError
from onnxcompress.search.evaluator import Evaluator
from onnxcompress.search.executors import ExecutorConfig, InProcessExecutor, PoolExecutor, RayExecutor, make_executor
from tests.search.fakes import chain_model

TEACHER = chain_model()
X = np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32)
Y = np.random.default_rng(2).integers(0, 4, 64).astype(np.int64)
CALIB = np.random.default_rng(1).standard_normal((48, 3, 8, 8)).astype(np.float32)


def plans():
    out = []
    for keep in [(8, 16, 16, 24), (6, 8, 12, 12), (4, 12, 8, 20), (8, 4, 16, 6)]:
        groups = {g: k for g, k, c in zip(("g0", "g1", "g2", "g3"), keep, (8, 16, 16, 24)) if k < c}
        out.append({"passes": [{"pass": "prune_channels", "groups": groups, "criterion": "l1", "reconstruct": True}]} if groups else {"passes": []})
    out.append(out[1])  # a duplicate is evaluated once and answered twice
    out.append({"passes": [{"pass": "prune_channels", "groups": {"g7": 2}}]})  # infeasible
    return out


@pytest.fixture(scope="module")
def reference():
    ev = Evaluator(TEACHER, Dataset(X, Y), CALIB, seed=5)
    ex = InProcessExecutor(ev)
    results = ex.evaluate_many(plans())
    assert ex.evaluations == 5
    return ev, results


def test_in_process_order_and_cache(reference):
    ev, results = reference
    assert results[1] == results[4]
    assert not results[5].feasible
    assert [r.feasible for r in results[:5]] == [True] * 5


@pytest.mark.slow
def test_process_pool_is_identical(reference):
    ev, results = reference
    with PoolExecutor(ev.spec(), workers=2) as pool:
        assert pool.teacher_metrics == ev.teacher_metrics
        assert pool.evaluate_many(plans()) == results
        assert pool.evaluations == 5
        assert pool.evaluate_many(plans()[:2]) == results[:2] and pool.evaluations == 5


@pytest.mark.slow  # starting a local Ray instance takes 20 s to minutes on a busy 2-core machine
def test_ray_is_identical(reference):
    pytest.importorskip("ray")
    ev, results = reference
    with RayExecutor(ev.spec(), workers=2) as ray_ex:
        assert ray_ex.teacher_metrics == ev.teacher_metrics
        assert ray_ex.evaluate_many(plans()) == results


def test_make_executor_and_config_validation(reference):
    ev, _ = reference
    assert isinstance(make_executor(ExecutorConfig(), ev.spec()), InProcessExecutor)
    with pytest.raises(UsageError):
        ExecutorConfig(kind="dask")
    with pytest.raises(UsageError):
        ExecutorConfig(workers=0)


def test_missing_ray_is_a_clear_error(monkeypatch, reference):
    ev, _ = reference
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(UsageError, match="pip install"):
        make_executor(ExecutorConfig(kind="ray", workers=2), ev.spec())
