"""uniform: the same keep ratio for every group (or the same bit width for every layer), the
largest that meets the budget, found by bisection on the exact cost model. One evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from onnxcompress.compiler.errors import UsageError
from onnxcompress.search.agents.base import Agent, AgentContext, register_agent
from onnxcompress.search.env import CompressionEnv, Episode


@dataclass(frozen=True)
class UniformConfig:
    iterations: int = 40  # bisection steps on the keep ratio


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
            r = env.uniform_keep(iterations=self.config.iterations)
            return [env.replay_fractions([r] * len(env.space.groups))]
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
