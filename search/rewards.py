"""Episode rewards, by name. Every reward sees the candidate's measured Metrics, the teacher's,
the target, and the environment's predicted Cost of the candidate.

- "accuracy": AMC's resource-constrained reward (-error, shifted by 1 to the accuracy): the
  environment already enforces the budget, so only accuracy matters.
- "amc": AMC's accuracy-guaranteed reward -error * log(MACs): trades accuracy for fewer MACs.
- "n2n": N2N's reward C(2 - C) * accuracy / teacher accuracy, C = the fraction of the target's
  primary resource removed (N2N uses parameters).
- "latency": latency-aware (MnasNet's soft constraint): accuracy * (latency / budget)^-0.07 when
  over the latency budget, accuracy otherwise; measured latency when the evaluator measured it,
  the latency model's prediction otherwise.

An infeasible candidate (plan failed) gets the lowest value each reward can give.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Callable, Mapping

from onnxcompress.compiler.errors import UsageError
from onnxcompress.search.metrics import Cost, Metrics
from onnxcompress.search.targets import Target

RewardFn = Callable[[Metrics, Metrics, Target, Cost], float]

LATENCY_EXPONENT = -0.07  # MnasNet's w for a hard-ish latency constraint


def accuracy_reward(m: Metrics, teacher: Metrics, target: Target, predicted: Cost) -> float:
    return m.accuracy if m.feasible else 0.0


def amc_reward(m: Metrics, teacher: Metrics, target: Target, predicted: Cost) -> float:
    if not m.feasible:
        return -1.0 * math.log(max(teacher.macs, 2))
    return -(1.0 - m.accuracy) * math.log(max(m.macs, 2))


def _kept_fraction(m: Metrics, teacher: Metrics, dim: str) -> float:
    mine, ref = m.value(dim), teacher.value(dim)
    if mine is None or not ref:
        return 1.0
    return float(mine) / float(ref)


def n2n_reward(m: Metrics, teacher: Metrics, target: Target, predicted: Cost) -> float:
    if not m.feasible:
        return 0.0
    c = min(1.0, max(0.0, 1.0 - _kept_fraction(m, teacher, target.primary)))
    return c * (2.0 - c) * m.accuracy / max(teacher.accuracy, 1e-9)


def latency_reward(m: Metrics, teacher: Metrics, target: Target, predicted: Cost) -> float:
    if not m.feasible:
        return 0.0
    latency = m.latency_ms if m.latency_ms is not None else predicted.latency_ms
    if target.latency is None or latency is None or teacher.latency_ms is None:
        return m.accuracy
    budget = target.latency * teacher.latency_ms
    return m.accuracy * (latency / budget) ** LATENCY_EXPONENT if latency > budget else m.accuracy


REWARDS: Mapping[str, RewardFn] = MappingProxyType(
    {"accuracy": accuracy_reward, "amc": amc_reward, "n2n": n2n_reward, "latency": latency_reward}
)


def get_reward(name: str) -> RewardFn:
    fn = REWARDS.get(name)
    if fn is None:
        raise UsageError(f"unknown reward '{name}'; choose one of {', '.join(REWARDS)}")
    return fn
