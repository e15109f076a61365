"""The evaluator on a tiny real graph: accuracy, costs, caching, infeasible plans."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcompress.compiler.data import Dataset
from onnxcompress.compiler.runtime import make_session, run_batched
from onnxcompress.passes import Plan
from onnxcompress.search.evaluator import Evaluator, plan_key
from tests.search.fakes import chain_model

TEACHER = chain_model()
X = np.random.default_rng(0).standard_normal((96, 3, 8, 8)).astype(np.float32)
CALIB = np.random.default_rng(1).standard_normal((64, 3, 8, 8)).astype(np.float32)
PLAN = {"passes": [{"pass": "prune_channels", "groups": {"g1": 8, "g3": 12}, "criterion": "l1", "reconstruct": True}]}


@pytest.fixture(scope="module")
def labelled():
    y = run_batched(make_session(TEACHER), X).argmax(1).astype(np.int64)
    y[:24] = (y[:24] + 1) % 4  # the teacher gets exactly 75 % right
    return Evaluator(TEACHER, Dataset(X, y), CALIB, seed=0)


def test_teacher_metrics(labelled):
    t = labelled.teacher_metrics
    assert t.accuracy == pytest.approx(0.75)
    assert t.feasible and t.macs == labelled.space.teacher_cost.macs
    assert t.params == labelled.space.teacher_cost.params and t.size_bytes == TEACHER.ByteSize()  # the file


def test_agreement_without_labels():
    ev = Evaluator(TEACHER, Dataset(X), CALIB, seed=0)
    assert ev.teacher_metrics.accuracy == 1.0
    m = ev.evaluate(PLAN)
    assert 0.0 <= m.accuracy <= 1.0


def test_evaluate_matches_prediction_and_caches(labelled):
    m = labelled.evaluate(PLAN)
    assert m.feasible and m.error is None
    p = labelled.predict_cost(PLAN)
    assert (m.macs, m.params, m.size_bytes) == (p.macs, p.params, p.size_bytes)
    assert m.macs < labelled.teacher_metrics.macs
    n = labelled.evaluations
    again = labelled.evaluate(Plan.from_json(PLAN))  # the same plan as an object: one cache entry
    assert again == m and labelled.evaluations == n
    assert plan_key(PLAN) == plan_key(Plan.from_json(PLAN))


def test_same_seed_same_result():
    a = Evaluator(TEACHER, Dataset(X), CALIB, seed=3).evaluate(PLAN)
    b = Evaluator(TEACHER, Dataset(X), CALIB, seed=3).evaluate(PLAN)
    assert a == b


@pytest.mark.parametrize(
    "plan",
    [
        {"passes": [{"pass": "prune_channels", "groups": {"g99": 3}}]},
        {"passes": [{"pass": "no_such_pass"}]},
        {"passes": [{"pass": "prune_channels", "groups": {"g1": 999}}]},
        {"oops": 1},
    ],
)
def test_invalid_plans_are_infeasible_not_crashes(labelled, plan):
    m = labelled.evaluate(plan)
    assert not m.feasible and m.accuracy == 0.0 and m.error
