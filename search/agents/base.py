"""The agent interface and the agent registry.

An agent is an ask/tell optimiser over episodes of a `CompressionEnv`:

    agent = get_agent("ddpg").create(AgentContext(features=..., episodes=N, seed=s), config)
    while True:
        episodes = agent.ask(env, n)          # roll out up to n episodes (no evaluation)
        if not episodes: break                # the agent has nothing more to propose
        metrics = executor.evaluate_many([e.plan for e in episodes])
        agent.tell(episodes, [env.reward(e, m) for e, m in zip(episodes, metrics)])

Evaluation happens between ask and tell, so the search can evaluate many episodes in parallel
and the result does not depend on the executor. An agent keeps all its randomness in its own
generators and its whole state in `state_dict()` (tensors, numbers, strings, lists and dicts
only, so a checkpoint loads with `torch.load(weights_only=True)`).

A new agent is one module in search/agents/ that subclasses `Agent` and decorates it with
`@register_agent(...)`, plus its test against a fake evaluator; nothing else changes.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import numpy as np
import torch

from onnxcompress.compiler.errors import UsageError
from onnxcompress.search.env import CompressionEnv, Episode


@dataclass(frozen=True)
class AgentContext:
    """What every agent is built with: the observation size, the episode budget for the target
    it searches (schedules such as noise decay depend on it) and its seed."""

    features: int
    episodes: int
    seed: int


class Agent(ABC):
    name: ClassVar[str] = ""

    def __init__(self, context: AgentContext, config: Any) -> None:
        self.context = context
        self.config = config
        self.rng = np.random.Generator(np.random.PCG64(context.seed))

    @abstractmethod
    def ask(self, env: CompressionEnv, n: int) -> list[Episode]:
        """Up to `n` new episodes; [] when the agent has nothing more to propose."""

    def tell(self, episodes: Sequence[Episode], rewards: Sequence[float]) -> None:
        """The rewards of the episodes from the last ask (in the same order)."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state(self.rng)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        set_rng_state(self.rng, state["rng"])


@dataclass(frozen=True)
class AgentSpec:
    name: str
    cls: type[Agent]
    config: type  # the agent's frozen hyperparameter dataclass (all fields have defaults)
    stages: tuple[str, ...]  # the environment stages it searches by default
    description: str

    def create(self, context: AgentContext, config: Any | None = None) -> Agent:
        cfg = self.config() if config is None else config
        if not isinstance(cfg, self.config):
            raise UsageError(f"agent '{self.name}' takes a {self.config.__name__}, got {type(cfg).__name__}")
        return self.cls(context, cfg)

    def config_from_json(self, obj: Mapping[str, Any] | None) -> Any:
        """The agent's config from JSON (unknown keys are an error, listed with the known ones)."""
        obj = dict(obj or {})
        known = {f.name for f in fields(self.config)}
        unknown = set(obj) - known
        if unknown:
            raise UsageError(f"agent '{self.name}' has no option(s) {sorted(unknown)}; options: {sorted(known)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()}
        return self.config(**kwargs)


_AGENTS: dict[str, AgentSpec] = {}
AGENTS: Mapping[str, AgentSpec] = MappingProxyType(_AGENTS)


def register_agent(name: str, config: type, stages: tuple[str, ...], description: str) -> Callable[[type[Agent]], type[Agent]]:
    def deco(cls: type[Agent]) -> type[Agent]:
        if name in _AGENTS:
            raise RuntimeError(f"agent '{name}' registered twice")
        cls.name = name
        _AGENTS[name] = AgentSpec(name, cls, config, tuple(stages), description)
        return cls

    return deco


def get_agent(name: str) -> AgentSpec:
    spec = AGENTS.get(name)
    if spec is None:
        raise UsageError(f"unknown agent '{name}'; choose one of {', '.join(sorted(AGENTS))}")
    return spec


# ---------------------------------------------------------------------------------------------
# helpers shared by agents
# ---------------------------------------------------------------------------------------------


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """A numpy Generator's state as plain ints and strings (checkpointable)."""
    s = rng.bit_generator.state
    return {"bit_generator": s["bit_generator"], "state": dict(s["state"]), "has_uint32": int(s["has_uint32"]), "uinteger": int(s["uinteger"])}


def set_rng_state(rng: np.random.Generator, state: Mapping[str, Any]) -> None:
    rng.bit_generator.state = {
        "bit_generator": state["bit_generator"],
        "state": {k: int(v) for k, v in state["state"].items()},
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


@contextlib.contextmanager
def seeded_torch(seed: int) -> Iterator[None]:
    """Builds networks from `seed` without touching torch's global generator for anyone else:
    the global state is forked, seeded, and restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) % (2**63))
        yield


def truncated_normal(rng: np.random.Generator, mean: float, std: float, low: float = 0.0, high: float = 1.0) -> float:
    """A sample of N(mean, std) truncated to [low, high] (AMC's exploration noise)."""
    if std <= 0:
        return float(np.clip(mean, low, high))
    mean = float(np.clip(mean, low, high))
    for _ in range(64):
        x = rng.normal(mean, std)
        if low <= x <= high:
            return float(x)
    return float(np.clip(rng.normal(mean, std), low, high))
