"""Tiny teachers built in code and a fake evaluator whose optimum is known.

The fake evaluator scores a plan without running anything: accuracy is a known, separable
function of each group's kept fraction (and of the removed units, and of each layer's bits), so
the best plan under a budget can be found by brute force and agents can be checked against it.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Any, Mapping

import numpy as np
import onnx

from onnxcompress.compiler.onnx_io import canonicalize
from onnxcompress.search.metrics import Budget, Metrics
from onnxcompress.search.space import SearchSpace, keep_bounds
from onnxcompress.search.targets import Target
from tests.builders import GraphBuilder, resnet_like


def chain_model(seed: int = 0) -> onnx.ModelProto:
    """A plain chain of four convs (four independent prunable groups of 8/16/16/24 channels)."""
    g = GraphBuilder(seed=seed, size=8)
    x = g.relu(g.conv("x", 3, 8))
    x = g.relu(g.conv(x, 8, 16, stride=2))
    x = g.relu(g.conv(x, 16, 16))
    x = g.relu(g.conv(x, 16, 24, stride=2))
    return canonicalize(g.build(g.head(x, 24, classes=4)))


def deep_chain_model(seed: int = 0) -> onnx.ModelProto:
    """Six convs: a "larger teacher" for policy transfer."""
    g = GraphBuilder(seed=seed, size=8)
    x = g.relu(g.conv("x", 3, 8))
    widths = [8, 16, 16, 24, 24]
    c = 8
    for i, w in enumerate(widths):
        x, c = g.relu(g.conv(x, c, w, stride=2 if i in (1, 3) else 1)), w
    return canonicalize(g.build(g.head(x, c, classes=4)))


def residual_model(seed: int = 0) -> onnx.ModelProto:
    return canonicalize(resnet_like(seed=seed, width=8, blocks=2))


# sensitivity of each group (in topological order): the loss is w * (1 - kept fraction)^2
SENSITIVITY = (0.9, 0.05, 0.6, 0.02, 0.3, 0.1)
UNIT_PENALTY = 0.3  # loss per removed unit
BITS_LOSS = {32: 0.0, 16: 0.0, 8: 0.01, 4: 0.06, 2: 0.3}  # per layer, times its weight


class FakeEvaluator:
    """accuracy = 0.95 - sum_g w_g (1 - f_g)^2 - 0.3 * removed units - sum_l v_l * bits_loss;
    costs are the exact predictions of the search space (what the real evaluator measures)."""

    def __init__(self, teacher: onnx.ModelProto) -> None:
        self.space = SearchSpace(teacher)
        self.weights = {d.ident: SENSITIVITY[i % len(SENSITIVITY)] for i, d in enumerate(self.space.groups)}
        self.layer_weights = {d.ident: 1.0 + (i % 3) for i, d in enumerate(self.space.quantizable)}
        t = self.space.teacher_cost
        self.teacher_metrics = Metrics(0.95, t.macs, t.params, t.size_bytes)
        self.calls = 0

    def accuracy(self, removed, keep_local: Mapping[str, int], bits: Mapping[str, int]) -> float:
        s = self.space.structure(frozenset(removed))
        acc = 0.95 - UNIT_PENALTY * len(removed)
        for d in s.groups:
            f = keep_local.get(d.local, s.channels(d.local)) / s.channels(d.local)
            acc -= self.weights.get(d.ident, 0.1) * (1.0 - f) ** 2
        for name, b in bits.items():
            acc -= self.layer_weights[name] * BITS_LOSS[int(b)]
        return float(acc)

    def evaluate(self, plan: Mapping[str, Any]) -> Metrics:
        self.calls += 1
        if hasattr(plan, "to_json"):
            plan = plan.to_json()
        try:
            removed, keep, bits = self.space.decode(plan)
        except Exception as exc:
            return Metrics.infeasible(str(exc))
        c = self.space.cost(removed, keep, bits)
        return Metrics(self.accuracy(removed, keep, bits), c.macs, c.params, c.size_bytes)


@lru_cache(maxsize=None)
def _optimum_cached(key: int, model_bytes: bytes, macs: float, min_keep: float) -> tuple[float, tuple[int, ...]]:
    fake = FakeEvaluator(onnx.ModelProto.FromString(model_bytes))
    space = fake.space
    budget = Budget.of(Target(macs=macs), space.teacher_cost)
    groups = space.groups
    ranges = [range(keep_bounds(space.structure(frozenset()).channels(d.local), min_keep)[0], space.structure(frozenset()).channels(d.local) + 1) for d in groups]
    best, arg = -1.0, ()
    for combo in itertools.product(*ranges):
        keep = {d.local: k for d, k in zip(groups, combo)}
        if budget.allows(space.cost(keep=keep)):
            a = fake.accuracy((), keep, {})
            if a > best:
                best, arg = a, combo
    return best, arg


def prune_optimum(model: onnx.ModelProto, macs: float, min_keep: float = 0.2) -> tuple[float, tuple[int, ...]]:
    """(best fake accuracy, kept counts) under a MACs budget, by brute force."""
    data = model.SerializeToString()
    return _optimum_cached(hash(data), data, macs, min_keep)


def best_uniform_accuracy(model: onnx.ModelProto, macs: float) -> float:
    fake = FakeEvaluator(model)
    space = fake.space
    s = space.structure(frozenset())
    budget = Budget.of(Target(macs=macs), space.teacher_cost)
    best = -1.0
    for r in np.linspace(0.2, 1.0, 801):
        keep = {d.local: max(keep_bounds(s.channels(d.local), 0.2)[0], int(round(r * s.channels(d.local)))) for d in s.groups}
        if budget.allows(space.cost(keep=keep)):
            best = max(best, fake.accuracy((), keep, {}))
    return best


def quantize_optimum(model: onnx.ModelProto, size: float, bits: tuple[int, ...] = (4, 8)) -> float:
    """Best fake accuracy under a size budget over every bit assignment (brute force)."""
    fake = FakeEvaluator(model)
    space = fake.space
    budget = Budget.of(Target(size=size), space.teacher_cost)
    names = [d.ident for d in space.quantizable]
    best = -1.0
    for combo in itertools.product(bits, repeat=len(names)):
        b = dict(zip(names, combo))
        if budget.allows(space.cost(bits=b)):
            best = max(best, fake.accuracy((), {}, b))
    return best
