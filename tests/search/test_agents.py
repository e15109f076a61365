"""Every agent against the fake evaluator, whose optimum is known by brute force."""

from __future__ import annotations

import pytest
import torch

from onnxcompress.errors import UsageError
from onnxcompress.search import SearchConfig, Target, run_search
from onnxcompress.search.agents import AGENTS, AgentContext, get_agent
from onnxcompress.search.agents.ddpg import DDPGConfig
from onnxcompress.search.agents.haq import HAQConfig
from onnxcompress.search.agents.reinforce import ReinforceConfig
from onnxcompress.search.env import FEATURES, CompressionEnv, EnvConfig
from onnxcompress.search.executors import InProcessExecutor
from onnxcompress.search.space import SearchSpace
from tests.search.fakes import FakeEvaluator, best_uniform_accuracy, chain_model, deep_chain_model, prune_optimum, quantize_optimum, residual_model

CHAIN = chain_model()
OPTIMUM, _ = prune_optimum(CHAIN, 0.5)
UNIFORM = best_uniform_accuracy(CHAIN, 0.5)


def search(agent: str, episodes: int, model=CHAIN, target=Target(macs=0.5), seed: int = 0, **kw):
    cfg = SearchConfig(agent=agent, episodes=episodes, targets=(target,), seed=seed, **kw)
    return run_search(model, None, None, cfg, executor=InProcessExecutor(FakeEvaluator(model)), progress=False)


def test_registry_is_read_only_and_complete():
    assert {"ddpg", "reinforce", "haq", "uniform", "random", "greedy"} <= set(AGENTS)
    with pytest.raises(TypeError):
        AGENTS["mine"] = AGENTS["ddpg"]  # type: ignore[index]
    with pytest.raises(UsageError, match="unknown agent"):
        get_agent("nope")
    with pytest.raises(UsageError, match="no option"):
        get_agent("ddpg").config_from_json({"learning_rate": 1})


def test_the_fake_problem_is_not_trivial():
    assert OPTIMUM - UNIFORM > 0.1  # a good allocation is far better than uniform pruning


def test_uniform_finds_the_best_uniform_plan():
    r = search("uniform", 10)
    assert r.evaluations == 1
    assert r.best[0].metrics.accuracy == pytest.approx(UNIFORM)


def test_greedy_finds_the_optimum_of_a_separable_problem():
    r = search("greedy", 100)
    assert r.evaluations <= 1 + 4 * 3 + 3
    assert r.best[0].metrics.accuracy >= OPTIMUM - 1e-9


def test_random_gets_close():
    r = search("random", 100)
    assert r.best[0].metrics.accuracy >= OPTIMUM - 0.05
    assert r.best[0].metrics.within(Target(macs=0.5), r.teacher)


def test_ddpg_finds_the_optimum():
    # fewer updates than the default (64) keep the test fast; uniform is 0.17 below the optimum
    r = search("ddpg", 60, agent_config=DDPGConfig(updates_per_episode=16))
    assert r.best[0].metrics.accuracy >= OPTIMUM - 0.03


def test_reinforce_finds_the_optimum():
    r = search("reinforce", 120, stages=("prune",))
    assert r.best[0].metrics.accuracy >= OPTIMUM - 0.035


def test_reinforce_learns_not_to_remove_costly_units():
    """Removing a unit costs 0.3 accuracy in the fake: stage 1 must learn to keep them all."""
    model = residual_model()
    best, _ = prune_optimum(model, 0.5)
    # a weak prior (the default keeps with 0.97) so that removal is tried, and must be unlearnt
    r = search("reinforce", 80, model=model, agent_config=ReinforceConfig(keep_prior=0.7))
    assert all(step["pass"] != "remove" for step in r.best[0].plan["passes"])
    assert r.best[0].metrics.accuracy >= best - 0.08  # any removal would cost 0.3
    # and the policy moved toward keeping: late episodes remove less than early ones
    removed = [sum(s["pass"] == "remove" for s in c.plan["passes"]) for c in r.candidates]
    assert sum(removed[-20:]) < sum(removed[:20])


def test_haq_finds_the_best_bit_widths():
    best = quantize_optimum(CHAIN, 0.2)
    r = search("haq", 40, target=Target(size=0.2), agent_config=HAQConfig(updates_per_episode=8))
    assert r.best[0].metrics.accuracy >= best - 1e-9
    step = r.best[0].plan["passes"][0]
    assert step["pass"] == "quantize" and set(step["nodes"].values()) <= {4, 8}


def test_haq_with_four_widths_stays_in_budget():
    r = search("haq", 12, target=Target(size=0.5), bits=(4, 8, 16, 32), agent_config=HAQConfig(updates_per_episode=4))
    assert all(c.metrics.within(Target(size=0.5), r.teacher) for c in r.candidates)
    assert r.best[0].metrics.accuracy >= quantize_optimum(CHAIN, 0.5, (4, 8, 16, 32)) - 0.05


def test_uniform_quantization():
    r = search("uniform", 3, target=Target(size=0.3), stages=("quantize",))
    assert r.evaluations == 1
    assert set(r.best[0].plan["passes"][0]["nodes"].values()) == {8}


# -- policy transfer (N2N: small teacher -> larger teacher) --------------------------------------


def _agent(seed=0, **kw):
    return get_agent("reinforce").create(AgentContext(len(FEATURES), 40, seed), ReinforceConfig(**kw))


def test_policy_transfers_to_a_deeper_teacher(tmp_path):
    small = CompressionEnv(SearchSpace(CHAIN), Target(macs=0.5), EnvConfig(stages=("prune",)), FakeEvaluator(CHAIN).teacher_metrics)
    fake = FakeEvaluator(CHAIN)
    trained = _agent()
    for _ in range(10):
        eps = trained.ask(small, 4)
        trained.tell(eps, [small.reward(e, fake.evaluate(e.plan)) for e in eps])
    path = tmp_path / "policy.pt"
    trained.save_policy(path)
    assert torch.load(path, weights_only=True)["features"] == list(FEATURES)

    fresh = _agent(seed=7)
    fresh.load_policy(path)
    for a, b in zip(trained.policy.state_dict().values(), fresh.policy.state_dict().values()):
        assert torch.equal(a, b)
    deep = DEEP_ENV()
    ep = fresh.greedy_episode(deep)
    assert len(ep.actions) == len(deep.space.groups) == 6 and ep.within_budget
    # the same greedy decisions as the source agent on the same sequence
    assert fresh.greedy_episode(small).plan == trained.greedy_episode(small).plan


def DEEP_ENV():
    model = deep_chain_model()
    return CompressionEnv(SearchSpace(model), Target(macs=0.5), EnvConfig(stages=("prune",)))


def test_incompatible_policy_is_refused(tmp_path):
    path = tmp_path / "p.pt"
    _agent(hidden=16).save_policy(path)
    with pytest.raises(UsageError, match="hidden"):
        _agent().load_policy(path)
    with pytest.raises(UsageError, match="does not exist"):
        _agent().load_policy(tmp_path / "missing.pt")


def test_greedy_fits_its_scan_to_the_episode_budget():
    r = search("greedy", 8)  # 1 + 4 groups x 1 ratio + 3 allocations
    assert r.episodes == 8
    assert r.best[0].plan is not None and r.best[0].metrics.within(Target(macs=0.5), r.teacher)
    r = search("greedy", 5)  # not even one ratio per group: 1 + 1 group + 3 allocations
    assert r.episodes == 5 and r.best[0].plan is not None
