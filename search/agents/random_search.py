"""random: random search through the same environment (uniform actions in [0, 1] per step,
clamped to the budget like every agent's), with the same evaluation budget as the others."""

from __future__ import annotations

from dataclasses import dataclass

from onnxcompress.search.agents.base import Agent, register_agent
from onnxcompress.search.env import CompressionEnv, Episode


@dataclass(frozen=True)
class RandomConfig:
    low: float = 0.0  # actions are drawn uniformly from [low, high]
    high: float = 1.0


@register_agent("random", RandomConfig, ("prune",), "random search: uniform random actions through the environment")
class RandomAgent(Agent):
    def ask(self, env: CompressionEnv, n: int) -> list[Episode]:
        return [env.rollout(lambda _obs: float(self.rng.uniform(self.config.low, self.config.high))) for _ in range(n)]
