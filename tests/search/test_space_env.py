"""The search space's exact cost predictions and the environment's budget guarantee."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxcompress.compiler.cost import model_cost
from onnxcompress.errors import UsageError
from onnxcompress.passes import Plan, apply_plan
from onnxcompress.search.env import FEATURES, CompressionEnv, EnvConfig
from onnxcompress.search.space import SearchSpace, bits_from_action
from onnxcompress.search.targets import Target
from tests.search.fakes import chain_model, residual_model

CHAIN = chain_model()
RESIDUAL = residual_model()
SPACES = {"chain": SearchSpace(CHAIN), "residual": SearchSpace(RESIDUAL)}


def test_space_lists_groups_units_and_layers_in_order():
    s = SPACES["chain"]
    assert [d.ident for d in s.groups] == ["g0", "g1", "g2", "g3"]
    assert [d.out_channels for d in s.groups] == [8, 16, 16, 24]
    r = SPACES["residual"]
    assert {d.op for d in r.units} >= {"residual_block"}
    assert len(r.quantizable) == 6  # 5 convs + the Gemm head


@pytest.mark.parametrize("removed", [(), ("b2",), ("b0",)])
def test_predicted_cost_equals_rewritten_model(removed):
    """After removals, pruning is decided on the groups that remain; the prediction must equal
    the cost of the model the plan produces."""
    s = SPACES["residual"]
    units = {u.ident for u in s.units}
    removed = frozenset(u for u in removed if u in units)
    st_ = s.structure(removed)
    keep = {d.ident: max(1, s.structure(removed).channels(d.local) // 2) for d in st_.groups}
    plan = s.plan_json(removed, keep, None, reconstruct=False)
    model = apply_plan(RESIDUAL, Plan.from_json(plan))
    measured = model_cost(model)
    predicted = s.predict(plan)
    assert predicted.macs == measured.macs
    assert predicted.params == measured.params
    # sizes are file bytes: parameters plus the graph's structure, which pruning barely changes
    assert abs(predicted.size_bytes - model.ByteSize()) <= 0.03 * model.ByteSize()


def test_quantize_search_size_is_the_written_file():
    """A size budget means the file: in a quantization search the space predicts the bytes the
    quantize pass writes (the measured PrecisionCost table: scales, int32 biases, Q/DQ nodes) and
    the evaluator measures the written model, so a plan the search accepts also fits when the
    pipeline checks it (it once re-quantized HAQ's plan to int4 everywhere: 0.18x predicted
    from parameter bytes, 0.22x in the file)."""
    from onnxcompress.passes.quantize.precision import PrecisionCost
    from onnxcompress.compiler.data import Dataset
    from onnxcompress.search.evaluator import Evaluator

    calib = np.random.default_rng(0).random((16, 3, 8, 8)).astype(np.float32)
    space = SearchSpace(CHAIN, precision=PrecisionCost.build(CHAIN, calib[:4], precisions=(8, 4), rounds=1))
    assert space.teacher_cost.size_bytes == CHAIN.ByteSize()
    names = [d.ident for d in space.quantizable]
    evaluator = Evaluator(CHAIN, Dataset(calib), calib)
    for bits in ({n: 8 for n in names}, {n: (4 if i % 2 else 8) for i, n in enumerate(names)}):
        plan = {"passes": [{"pass": "quantize", "nodes": bits}]}
        written = apply_plan(CHAIN, Plan.from_json(plan), calibration=calib).ByteSize()
        assert abs(space.cost(bits=bits).size_bytes - written) <= 0.01 * written
        assert evaluator.evaluate(plan).size_bytes == written


def test_bits_mapping_and_size():
    assert [bits_from_action(a, (4, 8)) for a in (0.0, 0.49, 0.5, 1.0)] == [4, 4, 8, 8]
    assert [bits_from_action(a, (4, 8, 16, 32)) for a in (0.1, 0.3, 0.6, 0.99)] == [4, 8, 16, 32]
    s = SPACES["chain"]
    all8 = s.cost(bits={d.ident: 8 for d in s.quantizable})
    # 8-bit layers take a quarter of their float bytes; nothing else changes
    layer_params = sum(d.params for d in s.quantizable)
    assert all8.size_bytes == s.teacher_cost.size_bytes - 3 * layer_params
    assert all8.macs == s.teacher_cost.macs


def test_observation_is_named_and_normalised():
    env = CompressionEnv(SPACES["chain"], Target(macs=0.5))
    obs = env.reset()
    assert obs.shape == (len(FEATURES),) and obs.dtype == np.float32
    assert env.feature_names == FEATURES
    seen, applied = [obs], []
    while True:
        step = env.step(0.7)
        applied.append(step.applied)
        if step.done:
            break
        seen.append(step.observation)
    arr = np.stack(seen)
    assert np.all(arr >= -1e-6) and np.all(arr <= 1 + 1e-6)
    assert arr[0, FEATURES.index("index")] == 0 and arr[-1, FEATURES.index("index")] == 1
    assert arr[1, FEATURES.index("prev_action")] == pytest.approx(applied[0])
    assert np.all(np.diff(arr[:, FEATURES.index("macs_cut")]) >= 0)


def test_centred_actions():
    """0.5 asks for the uniform ratio that meets the budget, 0 for min_keep, 1 for everything."""
    env = CompressionEnv(SPACES["chain"], Target(macs=0.5))
    u = env.uniform_keep()
    assert 0.6 < u < 0.8
    assert env.keep_fraction(0.5, u) == pytest.approx(u)
    assert env.keep_fraction(0.0, u) == pytest.approx(0.2) and env.keep_fraction(1.0, u) == 1.0
    for f in (0.2, 0.3, u, 0.9, 1.0):
        assert env.keep_fraction(env.action_for(f, u), u) == pytest.approx(f)
    ep = env.replay([0.5] * 4)
    kept = ep.plan["passes"][0]["groups"]
    assert kept == {g: round(u * c) for g, c in zip(("g0", "g1", "g2", "g3"), (8, 16, 16, 24)) if round(u * c) < c}
    raw = CompressionEnv(SPACES["chain"], Target(macs=0.5), EnvConfig(center=False))
    assert raw.keep_fraction(0.3, u) == 0.3


def test_unreachable_target_is_a_clear_error():
    with pytest.raises(UsageError, match="cannot be reached"):
        CompressionEnv(SPACES["chain"], Target(macs=0.01))
    with pytest.raises(UsageError, match="cannot be reached"):
        CompressionEnv(SPACES["chain"], Target(macs=0.5), EnvConfig(stages=("quantize",)))


def test_gym_style_evaluation_returns_reward():
    calls = []

    def evaluate(plan):
        from onnxcompress.search.metrics import Metrics

        calls.append(plan)
        return Metrics(0.5, 1, 1, 1)

    env = CompressionEnv(SPACES["chain"], Target(macs=0.5), evaluate=evaluate)
    env.reset()
    step = None
    for _ in range(4):
        step = env.step(1.0)
    assert step.done and step.reward == pytest.approx(0.5) and len(calls) == 1


CASES = [
    ("chain", ("prune",), "macs"),
    ("chain", ("prune",), "params"),
    ("residual", ("prune",), "size"),
    ("residual", ("remove", "prune"), "macs"),
    ("residual", ("remove",), "macs"),
    ("chain", ("quantize",), "size"),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=st.sampled_from(CASES),
    fraction=st.floats(0.05, 1.0),
    actions=st.lists(st.floats(0.0, 1.0) | st.sampled_from([0.0, 1.0, 0.5]), min_size=1, max_size=12),
)
def test_environment_never_emits_an_over_budget_plan(case, fraction, actions):
    name, stages, dim = case
    space = SPACES[name]
    try:
        env = CompressionEnv(space, Target(**{dim: fraction}), EnvConfig(stages=stages))
    except UsageError:
        return  # the target is below what these stages can reach: refused up front
    ep = env.replay(actions, default=1.0)
    assert ep.within_budget
    predicted = space.predict(ep.plan)  # decoding the emitted plan gives the same cost
    assert predicted == ep.cost
    assert env.budget.allows(predicted)
    limit = getattr(env.budget, {"size": "size_bytes"}.get(dim, dim))
    assert getattr(predicted, {"size": "size_bytes"}.get(dim, dim)) <= limit


def test_emitted_plans_rewrite_to_within_budget():
    """The real rewrite agrees: random episodes measured on the rewritten graph fit."""
    space = SPACES["residual"]
    env = CompressionEnv(space, Target(macs=0.4), EnvConfig(stages=("remove", "prune"), reconstruct=False))
    rng = np.random.default_rng(0)
    for _ in range(4):
        ep = env.rollout(lambda _o: float(rng.uniform()))
        model = apply_plan(RESIDUAL, Plan.from_json(ep.plan))
        assert model_cost(model).macs <= env.budget.macs


def test_probe_is_not_clamped_but_honest():
    env = CompressionEnv(SPACES["chain"], Target(macs=0.3))
    ep = env.probe({"g1": 0.5})
    assert ep.plan["passes"][0]["groups"] == {"g1": 8}
    assert not ep.within_budget


def test_channel_multiple_snaps_widths_within_budget():
    """With a channel multiple, kept counts land on the grid whenever the budget allows, and the
    budget still always holds."""
    import numpy as np

    from onnxcompress.compiler.onnx_io import canonicalize
    from onnxcompress.search.env import CompressionEnv, EnvConfig
    from onnxcompress.search.space import SearchSpace
    from onnxcompress.search.targets import Target
    from tests.builders import resnet_like

    teacher = canonicalize(resnet_like(width=32, blocks=2))
    space = SearchSpace(teacher)
    env = CompressionEnv(space, Target(macs=0.5), EnvConfig(channel_multiple=8))
    rng = np.random.default_rng(0)
    on_grid = total = 0
    for _ in range(10):
        obs = env.reset()
        done = False
        while not done:
            step = env.step(float(rng.random()))
            done = step.done
        episode = step.episode
        assert episode.within_budget and episode.cost.macs <= 0.5 * space.teacher_cost.macs * (1 + 1e-9)
        keep = next(p["groups"] for p in episode.plan["passes"] if p["pass"] == "prune_channels")
        sizes = {g.id: g.channels for g in space.analysis.groups}
        # off the grid only where rounding down would break the minimum and up the budget
        assert all(k % 8 == 0 or k == sizes[g] or (k // 8) * 8 < np.ceil(0.2 * sizes[g]) for g, k in keep.items()), keep
        on_grid += sum(k % 8 == 0 for k in keep.values())
        total += len(keep)
    assert on_grid >= 0.75 * total


def test_fixed_removals_are_in_every_plan_and_the_budget_holds():
    space = SPACES["residual"]
    unit = next(u.id for u in space.analysis.removable if u.kind == "residual_block")
    env = CompressionEnv(space, Target(macs=0.5), EnvConfig(stages=("prune",), reconstruct=False, removed=(unit,)))
    rng = np.random.default_rng(0)
    for _ in range(4):
        ep = env.rollout(lambda _o: float(rng.uniform()))
        assert ep.plan["passes"][0] == {"pass": "remove", "block": unit}
        model = apply_plan(RESIDUAL, Plan.from_json(ep.plan))
        assert model_cost(model).macs <= env.budget.macs
        assert ep.cost.macs == model_cost(model).macs


def test_snap_keeps_a_one_block_group_whole_when_the_budget_allows():
    env = CompressionEnv(SPACES["residual"], Target(macs=0.5), EnvConfig(channel_multiple=16))
    assert env._snap(10, 16, 4, lambda k: True) == 16  # thinning a one-block group saves no time
    assert env._snap(10, 16, 4, lambda k: k <= 12) == 10  # ... unless the budget needs it
    assert env._snap(20, 48, 10, lambda k: True) == 16  # the nearest multiple otherwise
    assert env._snap(30, 48, 10, lambda k: True) == 32
    assert CompressionEnv(SPACES["residual"], Target(macs=0.5))._snap(10, 16, 4, lambda k: True) == 10  # no grid
