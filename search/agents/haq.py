"""haq: HAQ (Wang et al. 2019) - a DDPG agent picks a bit width per quantizable layer under a
size (or latency) budget.

The agent is AMC's DDPG (ddpg.py) run on the environment's quantize stage: its continuous action
in [0, 1] becomes a bit width from the configured choices ({4, 8} or {4, 8, 16, 32}; HAQ's
round(b_min - 0.5 + a * (b_max - b_min + 1)) over a discrete set), and the environment lowers it
while the budget would otherwise be missed, as HAQ does before evaluating a policy. The plan step
is {"pass": "quantize", "nodes": {layer: bits}}; size is parameters x bytes per element.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxcompress.search.agents.base import register_agent
from onnxcompress.search.agents.ddpg import DDPGAgent, DDPGConfig


@dataclass(frozen=True)
class HAQConfig(DDPGConfig):
    """HAQ's DDPG hyperparameters are AMC's; kept as their own type so they can diverge."""


@register_agent("haq", HAQConfig, ("quantize",), "HAQ: DDPG chooses a bit width per layer under a size/latency budget")
class HAQAgent(DDPGAgent):
    pass
