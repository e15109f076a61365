"""The search driver: several targets, determinism, Pareto front, checkpoint and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxcompress.compiler.data import Dataset
from onnxcompress.errors import UsageError
from onnxcompress.search import ExecutorConfig, SearchConfig, Target, run_search
from onnxcompress.search.agents.ddpg import DDPGConfig
from onnxcompress.search.agents.haq import HAQConfig
from onnxcompress.search.executors import InProcessExecutor
from onnxcompress.search.metrics import Metrics
from onnxcompress.search.pareto import Candidate, best_for_target, pareto_front
from tests.search.fakes import FakeEvaluator, chain_model, residual_model

CHAIN = chain_model()
RESIDUAL = residual_model()


def fake_search(config: SearchConfig, model=CHAIN, executor=None, checkpoint_dir=None):
    ex = executor or InProcessExecutor(FakeEvaluator(model))
    return run_search(model, None, None, config, executor=ex, checkpoint_dir=checkpoint_dir, progress=False)


def trace(result) -> list[dict]:
    return [c.to_json() for c in result.candidates]


def test_several_targets_one_plan_each():
    cfg = SearchConfig(agent="random", episodes=16, targets=({"macs": 0.5}, {"macs": 0.25}, {"params": 0.3}), seed=1)
    r = fake_search(cfg)
    assert len(r.best) == 3 and r.episodes == 48
    for b in r.best:
        assert b.plan is not None and b.metrics.within(b.target, r.teacher)
    assert r.best[1].metrics.macs <= 0.25 * r.teacher.macs
    assert r.best[0].metrics.accuracy >= r.best[1].metrics.accuracy  # a looser budget is never worse
    assert {c.target for c in r.candidates} == {0, 1, 2}
    assert r.evaluations == len({json.dumps(c.plan, sort_keys=True) for c in r.candidates})


def test_pareto_front_is_non_dominated_and_sorted():
    cfg = SearchConfig(agent="random", episodes=30, targets=({"macs": 0.6}, {"macs": 0.3}), seed=2)
    r = fake_search(cfg)
    front = list(r.pareto)
    macs = [c.metrics.macs for c in front]
    accs = [c.metrics.accuracy for c in front]
    assert macs == sorted(macs) and accs == sorted(accs)
    for c in r.candidates:
        # every candidate is dominated by (or on) the front
        assert any(f.metrics.macs <= c.metrics.macs and f.metrics.accuracy >= c.metrics.accuracy for f in front)


def test_best_for_target_rules():
    t = Metrics(0.9, 100, 100, 400)
    mk = lambda acc, macs, ok=True: Candidate({"passes": [{"i": acc, "m": macs}]}, Metrics(acc, macs, 10, 40, feasible=ok), 0, 0, acc)
    cands = [mk(0.8, 60), mk(0.85, 40), mk(0.85, 30), mk(0.99, 10, ok=False), mk(0.95, 70)]
    assert best_for_target(cands, Target(macs=0.5), t).metrics.macs == 30  # tie on accuracy: cheaper
    assert best_for_target(cands, Target(macs=0.05), t) is None
    assert [c.metrics.macs for c in pareto_front(cands)] == [30, 70]


def test_same_seed_same_search_other_seed_other_search():
    cfg = SearchConfig(agent="ddpg", episodes=12, seed=3, agent_config=DDPGConfig(updates_per_episode=4, min_warmup=2))
    a, b = fake_search(cfg), fake_search(cfg)
    assert trace(a) == trace(b)
    c = fake_search(SearchConfig(agent="ddpg", episodes=12, seed=4, agent_config=DDPGConfig(updates_per_episode=4, min_warmup=2)))
    assert trace(a) != trace(c)


def test_config_json_round_trip_and_validation():
    cfg = SearchConfig(agent="ddpg", episodes=5, targets=({"macs": 0.5},), agent_config=DDPGConfig(hidden=32), stages=("prune",))
    again = SearchConfig.from_json(json.loads(json.dumps(cfg.to_json())))
    assert again == cfg
    with pytest.raises(UsageError):
        SearchConfig(agent="ddpg", agent_config=object())
    with pytest.raises(UsageError):
        SearchConfig(targets=({"flops": 0.5},))
    with pytest.raises(UsageError):
        SearchConfig(stages=("prune", "remove"))
    with pytest.raises(UsageError):
        SearchConfig.from_json({"episodez": 3})
    assert Target.parse("macs=0.5,params=0.3") == Target(macs=0.5, params=0.3)


class Interrupting(InProcessExecutor):
    """Raises KeyboardInterrupt at its `after`-th batch, as if the user pressed Ctrl-C."""

    def __init__(self, evaluator, after: int) -> None:
        super().__init__(evaluator)
        self.after = after
        self.batches = 0

    def evaluate_many(self, plans):
        self.batches += 1
        if self.batches == self.after:
            raise KeyboardInterrupt
        return super().evaluate_many(plans)


@pytest.mark.parametrize(
    "config, model, interrupts",
    [
        (SearchConfig(agent="ddpg", episodes=14, batch=2, checkpoint_every=1, seed=5, targets=({"macs": 0.5}, {"macs": 0.3}), agent_config=DDPGConfig(updates_per_episode=4, min_warmup=2)), CHAIN, (4, 9)),
        (SearchConfig(agent="reinforce", episodes=12, batch=3, checkpoint_every=2, seed=6), RESIDUAL, (3, 4)),
        (SearchConfig(agent="greedy", episodes=40, batch=4, checkpoint_every=1, seed=7), CHAIN, (2, 4)),
    ],
    ids=["ddpg-two-targets", "reinforce-remove-prune", "greedy"],
)
def test_interrupted_search_resumes_to_the_same_result(tmp_path, config, model, interrupts):
    reference = fake_search(config, model)
    for after in interrupts:
        folder = tmp_path / f"cp{after}"
        with pytest.raises(KeyboardInterrupt):
            fake_search(config, model, executor=Interrupting(FakeEvaluator(model), after), checkpoint_dir=str(folder))
        assert (folder / "state.json").is_file()
        fresh = FakeEvaluator(model)
        resumed = fake_search(config, model, executor=InProcessExecutor(fresh), checkpoint_dir=str(folder))
        assert trace(resumed) == trace(reference)
        assert resumed.plans == reference.plans
        # results restored from the checkpoint were not evaluated again
        assert fresh.calls < reference.evaluations
    assert len(list(folder.glob("agent-*.pt"))) <= 1  # older agent files are cleaned up


def test_checkpoint_of_another_search_is_refused(tmp_path):
    cfg = SearchConfig(agent="random", episodes=4, checkpoint_every=1)
    fake_search(cfg, checkpoint_dir=str(tmp_path))
    with pytest.raises(UsageError, match="another search"):
        fake_search(SearchConfig(agent="random", episodes=4, checkpoint_every=1, seed=9), checkpoint_dir=str(tmp_path))


def test_end_to_end_with_the_real_evaluator():
    """run_search builds the evaluator and executor itself from data (tiny graph, uniform)."""
    x = np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32)
    calib = np.random.default_rng(1).standard_normal((32, 3, 8, 8)).astype(np.float32)
    cfg = SearchConfig(agent="uniform", episodes=2, targets=({"macs": 0.6},), val_limit=30, calib_limit=24)
    r = run_search(CHAIN, Dataset(x), calib, cfg, executor=ExecutorConfig(), progress=False)
    assert r.teacher.accuracy == 1.0  # no labels: agreement with the teacher
    assert r.best[0].metrics.macs <= 0.6 * r.teacher.macs and 0 < r.best[0].metrics.accuracy <= 1
    out = r.to_json()
    assert out["best"][0]["plan"] == r.best[0].plan and out["evaluations"] == 1


def test_haq_latency_target_uses_the_quantize_latency_table():
    """A latency target on the quantize stage: the measured per-layer table of
    passes.quantize.precision predicts latency for the clamp; the evaluator measures every candidate."""
    x = np.random.default_rng(0).standard_normal((48, 3, 8, 8)).astype(np.float32)
    cfg = SearchConfig(agent="haq", episodes=3, targets=({"latency": 1.0},), bits=(8, 32), val_limit=48, calib_limit=32,
                       agent_config=HAQConfig(updates_per_episode=1, min_warmup=1))
    r = run_search(CHAIN, Dataset(x), x, cfg, progress=False)
    assert r.teacher.latency_ms is not None
    assert all(c.metrics.latency_ms is not None for c in r.candidates if c.metrics.feasible)
    assert all(s["pass"] == "quantize" for c in r.candidates for s in c.plan["passes"])
