"""greedy: per-group sensitivity scan, then greedy allocation (the classic "prune each layer
alone, see what it costs" baseline of Li et al. 2017 / NetAdapt-style allocation).

1. Scan: the unpruned teacher, then each prunable group alone at a few keep ratios (these probes
   ignore the budget on purpose). The sensitivity of a group at a ratio is the reward lost.
2. Allocate: starting from everything kept, repeatedly lower the group whose next step down (on
   a fine grid) loses the least interpolated reward per unit of the target's resource saved,
   until the budget holds; one allocation per `cost_exponents` value is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from onnxcompress.compiler.errors import UsageError
from onnxcompress.search.agents.base import Agent, AgentContext, register_agent
from onnxcompress.search.env import CompressionEnv, Episode
from onnxcompress.search.space import keep_bounds


@dataclass(frozen=True)
class GreedyConfig:
    scan_keep: tuple[float, ...] = (0.25, 0.5, 0.75)  # keep ratios each group is probed at
    grid: float = 0.05  # allocation step in keep ratio
    cost_exponents: tuple[float, ...] = (1.0, 0.5, 2.0)  # one allocation each: drop / saved**p


@register_agent("greedy", GreedyConfig, ("prune",), "per-group sensitivity scan, then greedy allocation")
class GreedyAgent(Agent):
    def __init__(self, context: AgentContext, config: GreedyConfig) -> None:
        super().__init__(context, config)
        self.scores: dict[str, float] = {}  # probe label -> reward
        self.pending: list[str] = []  # labels of probes not yet asked
        self._asked: list[str] = []  # labels of the episodes of the last ask
        self.started = False
        self.allocated = False

    # episodes are labelled "base", "<group id>@<keep>" (scan) or "alloc@<exponent>" so that
    # the state is plain strings and floats
    def _episode(self, env: CompressionEnv, label: str) -> Episode:
        if label == "base":
            return env.probe({})
        head, value = label.split("@")
        if head == "alloc":
            fractions = self._allocate(env, float(value))
            return env.replay_fractions([fractions[d.ident] for d in env.space.groups])
        return env.probe({head: float(value)})

    def ask(self, env: CompressionEnv, n: int) -> list[Episode]:
        if env.config.stages != ("prune",):
            raise UsageError("agent 'greedy' searches the prune stage only")
        if not self.started:
            self.started = True
            self.pending = ["base"] + self._scan_labels([d.ident for d in env.space.groups])
        if not self.pending and not self.allocated:
            # the scan is complete (the driver tells before it asks again): allocate
            self.allocated = True
            self.pending = [f"alloc@{p:g}" for p in self.config.cost_exponents]
        batch, self.pending = self.pending[:n], self.pending[n:]
        self._asked = batch
        return [self._episode(env, label) for label in batch]

    def tell(self, episodes: Sequence[Episode], rewards: Sequence[float]) -> None:
        for label, r in zip(getattr(self, "_asked", []), rewards):
            self.scores[label] = float(r)

    def _scan_labels(self, groups: list[str]) -> list[str]:
        """The probes, cut to the episode budget (the allocations are always kept): fewer keep
        ratios per group (0.5 first), and with too few episodes even for that, the first groups
        only (the others then count with the scanned groups' mean sensitivity)."""
        room = self.context.episodes - 1 - len(self.config.cost_exponents)
        levels = sorted(self.config.scan_keep, key=lambda k: (abs(k - 0.5), k))
        per_group = max(0, min(len(levels), room // max(1, len(groups))))
        if per_group == 0:
            return [f"{g}@{levels[0]:g}" for g in groups[: max(0, room)]] if levels else []
        return [f"{g}@{k:g}" for g in groups for k in sorted(levels[:per_group])]

    def _scanned(self, gid: str) -> bool:
        return any(f"{gid}@{k:g}" in self.scores for k in self.config.scan_keep)

    def _drop(self, gid: str, f: float) -> float:
        """Interpolated reward lost when group `gid` keeps fraction f (0 at f = 1)."""
        base = self.scores.get("base", 0.0)
        if not self._scanned(gid):
            others = sorted({label.split("@")[0] for label in self.scores if "@" in label and not label.startswith("alloc@")})
            return float(np.mean([self._drop(g, f) for g in others])) if others else 0.0
        pts = sorted([(1.0, 0.0)] + [(k, base - self.scores[f"{gid}@{k:g}"]) for k in self.config.scan_keep if f"{gid}@{k:g}" in self.scores])
        xs = np.array([p[0] for p in pts])
        ys = np.maximum.accumulate(np.array([p[1] for p in pts])[::-1])[::-1]  # monotone: less kept never loses less
        if f >= xs[0]:
            return float(np.interp(f, xs, ys))
        slope = (ys[1] - ys[0]) / (xs[1] - xs[0]) if len(xs) > 1 else 0.0
        return float(ys[0] + slope * (f - xs[0]))

    def _allocate(self, env: CompressionEnv, exponent: float) -> dict[str, float]:
        """Kept fraction per group (teacher id) after greedy allocation, on channel counts."""
        s = env.space.structure(frozenset())
        groups = s.groups
        dim = env.target.primary
        channels = {d.ident: s.channels(d.local) for d in groups}
        keep = dict(channels)
        floor = {g: keep_bounds(c, env.config.min_keep)[0] for g, c in channels.items()}
        step = {g: max(1, int(round(self.config.grid * c))) for g, c in channels.items()}

        def cost(k: Mapping[str, int]):
            return env.space.cost(structure=s, keep={d.local: k[d.ident] for d in groups})

        def value(c) -> float:
            return float({"macs": c.macs, "params": c.params, "size": c.size_bytes, "latency": c.latency_ms or 0.0}[dim])

        current = cost(keep)
        while not env.budget.allows(current):
            best, best_score, best_cost = None, None, None
            for d in groups:
                g = d.ident
                lower = max(floor[g], keep[g] - step[g])
                if lower >= keep[g]:
                    continue
                trial_cost = cost({**keep, g: lower})
                saved = value(current) - value(trial_cost)
                if saved <= 0:
                    continue
                loss = max(0.0, self._drop(g, lower / channels[g]) - self._drop(g, keep[g] / channels[g]))
                score = loss / saved**exponent
                if best_score is None or score < best_score:
                    best, best_score, best_cost = g, score, trial_cost
            if best is None:  # nothing can go lower: the environment clamps the rest
                break
            keep[best] = max(floor[best], keep[best] - step[best])
            current = best_cost
        return {g: keep[g] / channels[g] for g in channels}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "scores": dict(self.scores),
            "pending": list(self.pending),
            "asked": list(getattr(self, "_asked", [])),
            "started": self.started,
            "allocated": self.allocated,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.scores = {str(k): float(v) for k, v in state["scores"].items()}
        self.pending = [str(x) for x in state["pending"]]
        self._asked = [str(x) for x in state["asked"]]
        self.started = bool(state["started"])
        self.allocated = bool(state["allocated"])
