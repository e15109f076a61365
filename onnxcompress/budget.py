"""A wall-clock budget for `compress` (`--time-budget 60m`): the run plans its search, structure
probes and fine-tuning to finish within it on the machine it runs on, from costs it measures as
it goes, and the report says how the time was spent.

The plan, in order (each share is of the whole budget, so the phases cannot starve each other):
- before the search, nothing is measured yet: reading data and the teacher are spent as they come;
- the search (every structure family's channel search and the depth ranking) gets
  SEARCH_SHARE; its episodes per family follow from the measured time of one evaluation (the
  uniform baseline's evaluations are timed first);
- the structure probes (one short fine-tune per family) get PROBE_SHARE; a probe's samples follow
  from the measured training throughput;
- fine-tuning gets what is left minus a reserve for the final measurement and export (the
  latency of teacher and students side by side, the report); its epochs follow from the
  measured time per training sample (the probes measure it; without probes, a short timing run),
  and when not even one epoch over the data fits, it trains on a seeded random subset.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from onnxcompress.compiler.errors import UsageError

SEARCH_SHARE = 0.25
PROBE_SHARE = 0.10
RESERVE_SHARE = 0.04  # final latency measurement, report and export
MIN_RESERVE_S = 20.0

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """'60m', '1h', '1h30m', '90s', '45' (minutes) -> seconds."""
    t = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", t):
        seconds = float(t) * 60.0
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", t)
        if not parts or "".join(n + u for n, u in parts) != t:
            raise UsageError(f"--time-budget {text!r}: give a duration like 60m, 1h30m, 90s or a number of minutes")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise UsageError(f"--time-budget {text!r}: must be positive")
    return seconds


@dataclass
class TimeBudget:
    """The budget of one compress run and what each phase spent (seconds)."""

    total_s: float
    start: float = field(default_factory=time.perf_counter)
    spent: dict[str, float] = field(default_factory=dict)
    planned: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return self.total_s - self.elapsed()

    def reserve(self) -> float:
        return max(MIN_RESERVE_S, RESERVE_SHARE * self.total_s)

    def allow(self, phase: str, share: float) -> float:
        """Seconds `phase` may take: its share of the budget, never more than what is left
        (keeping the reserve and, before fine-tuning, the fine-tuning's minimal share)."""
        keep = self.reserve() + (0.0 if phase == "finetune" else 0.35 * self.total_s)
        seconds = max(0.0, min(share * self.total_s, self.remaining() - keep))
        self.planned[phase] = round(seconds, 1)
        return seconds

    def finetune_allowance(self) -> float:
        """What fine-tuning may take: everything but the reserve."""
        seconds = max(0.0, self.remaining() - self.reserve())
        self.planned["finetune"] = round(seconds, 1)
        return seconds

    def record(self, phase: str, seconds: float) -> None:
        self.spent[phase] = round(self.spent.get(phase, 0.0) + seconds, 1)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def to_json(self) -> dict:
        return {"budget_s": round(self.total_s, 1), "elapsed_s": round(self.elapsed(), 1), "planned_s": dict(self.planned),
                "spent_s": dict(self.spent), "notes": list(self.notes)}


def episodes_within(seconds: float, eval_s: float, families: int, default: int, minimum: int = 6) -> int:
    """Search episodes per family that fit `seconds` for `families` searches at `eval_s` per
    evaluation (one evaluation per episode), at most the agent's default."""
    if eval_s <= 0:
        return default
    return int(max(minimum, min(default, seconds / max(families, 1) / eval_s)))


def epochs_within(seconds: float, sample_s: float, samples: int, max_epochs: int) -> tuple[int, int]:
    """(epochs, samples per epoch) that fit `seconds` at `sample_s` per training sample: as many
    whole epochs over all `samples` as fit (at most `max_epochs`), else one epoch over the
    subset that fits (at least 1,000 samples or all of them)."""
    if sample_s <= 0:
        return max_epochs, samples
    per_epoch = sample_s * samples
    epochs = int(seconds // per_epoch)
    if epochs >= 1:
        return min(max_epochs, epochs), samples
    return 1, int(min(samples, max(1000, seconds / sample_s)))


__all__ = ["TimeBudget", "episodes_within", "epochs_within", "parse_duration"]
