"""uniform: the same keep ratio for every group (or the same bit width for every layer), the
largest that meets the budget, found by bisection on the exact cost model. One evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from onnxcompress.errors import UsageError
from onnxcompress.search.agents.base import Agent, AgentContext, register_agent
from onnxcompress.search.env import CompressionEnv, Episode
from onnxcompress.search.space import keep_bounds


@dataclass(frozen=True)
class UniformConfig:
    iterations: int = 40  # bisection steps on the keep ratio


def uniform_keep_ratio(env: CompressionEnv, iterations: int = 40) -> float:
    """The largest r such that keeping round(r * channels) of every group fits the budget."""
    s = env.space.structure(frozenset())
    groups = s.groups

    def keep(r: float) -> dict[str, int]:
        out = {}
        for d in groups:
            c = s.channels(d.local)
            lo, hi = keep_bounds(c, env.config.min_keep)
            out[d.local] = int(np.clip(int(round(r * c)), lo, hi))
        return out

    def fits(r: float) -> bool:
        return env.budget.allows(env.space.cost(structure=s, keep=keep(r)))

    if fits(1.0):
        return 1.0
    lo, hi = env.config.min_keep, 1.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


@register_agent("uniform", UniformConfig, ("prune",), "same keep ratio everywhere, bisected on SearchCost to meet the target")
class UniformAgent(Agent):
    def __init__(self, context: AgentContext, config: UniformConfig) -> None:
        super().__init__(context, config)
        self.proposed = False

    def ask(self, env: CompressionEnv, n: int) -> list[Episode]:
        if self.proposed or n < 1:
            return []
        self.proposed = True
        stages = env.config.stages
        if stages == ("prune",):
            r = uniform_keep_ratio(env, self.config.iterations)
            return [env.replay([r] * len(env.space.groups))]
        if stages == ("quantize",):
            choices = env.config.bits
            layers = env.space.quantizable
            fitting = [b for b in choices if env.budget.allows(env.space.cost(bits={d.ident: b for d in layers}))]
            b = max(fitting) if fitting else choices[0]
            return [env.replay([(choices.index(b) + 0.5) / len(choices)] * len(layers))]
        raise UsageError(f"agent 'uniform' searches prune or quantize stages, not {'+'.join(stages)}")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "proposed": self.proposed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.proposed = bool(state["proposed"])
