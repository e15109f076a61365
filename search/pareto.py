"""Every evaluated candidate, the Pareto front over (accuracy, resource), and the best plan for
each target.

A candidate is kept whatever its result (infeasible ones too: they explain a search). The front
for a resource (macs, params, size, latency) is the set of feasible candidates that no other
candidate beats on both accuracy (higher) and that resource (lower). The best plan for a target is
the most accurate feasible candidate within every bound of the target; ties go to the cheaper
one, then to the one found first, so the choice is deterministic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from onnxcompress.search.metrics import Metrics
from onnxcompress.search.targets import Target


@dataclass(frozen=True, eq=False)
class Candidate:
    """One evaluated plan: which search produced it (`target` index, `episode`) and its result."""

    plan: dict[str, Any]
    metrics: Metrics
    target: int
    episode: int
    reward: float

    @property
    def key(self) -> str:
        return json.dumps(self.plan, sort_keys=True, separators=(",", ":"))

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan, "metrics": self.metrics.to_json(), "target": self.target, "episode": self.episode, "reward": self.reward}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Candidate":
        return cls(dict(obj["plan"]), Metrics.from_json(obj["metrics"]), int(obj["target"]), int(obj["episode"]), float(obj["reward"]))


def unique(candidates: Iterable[Candidate]) -> list[Candidate]:
    """The first candidate of each distinct plan, in order."""
    seen: set[str] = set()
    out = []
    for c in candidates:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out


def pareto_front(candidates: Sequence[Candidate], resource: str = "macs") -> list[Candidate]:
    """Non-dominated feasible candidates on (accuracy up, `resource` down), cheapest first."""
    pool = [c for c in unique(candidates) if c.metrics.feasible and c.metrics.value(resource) is not None]
    pool.sort(key=lambda c: (c.metrics.value(resource), -c.metrics.accuracy))
    front: list[Candidate] = []
    best = float("-inf")
    for c in pool:
        if c.metrics.accuracy > best:
            front.append(c)
            best = c.metrics.accuracy
    return front


def best_for_target(candidates: Sequence[Candidate], target: Target, teacher: Metrics) -> Candidate | None:
    """The most accurate candidate within `target` (None when no candidate fits)."""
    best: Candidate | None = None
    for c in candidates:
        if not c.metrics.within(target, teacher):
            continue
        if best is None:
            best = c
            continue
        a, b = (c.metrics.accuracy, -c.metrics.value(target.primary)), (best.metrics.accuracy, -best.metrics.value(target.primary))  # type: ignore[operator]
        if a > b:
            best = c
    return best
