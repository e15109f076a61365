"""Search targets: resource budgets as fractions of the teacher (DESIGN.md's `--target`).

`Target(macs=0.5)` means "at most half the teacher's MACs". The class lives in the search layer,
the lowest that needs it, so that the CLI, the pipeline and the search share one definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from onnxcompress.compiler.errors import UsageError

DIMENSIONS = ("macs", "params", "size", "latency")


@dataclass(frozen=True)
class Target:
    """Upper bounds as fractions of the teacher's MACs, parameters, weight bytes and latency
    (DESIGN.md's `--target`). None = unconstrained; every dimension that is set must hold. One
    class for the CLI, the pipeline and the search."""

    macs: float | None = None
    params: float | None = None
    size: float | None = None
    latency: float | None = None

    def __post_init__(self) -> None:
        for key in DIMENSIONS:
            v = getattr(self, key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) <= 1.0:
                raise UsageError(f"target {key}={v!r} is impossible: it must be a fraction of the teacher in (0, 1]")
            object.__setattr__(self, key, float(v))
        if self.is_empty:
            raise UsageError("a target needs at least one of macs=, params=, size=, latency= (e.g. macs=0.5)")

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, d) is None for d in DIMENSIONS)

    def items(self) -> tuple[tuple[str, float], ...]:
        """The constrained dimensions, in DIMENSIONS order."""
        return tuple((d, getattr(self, d)) for d in DIMENSIONS if getattr(self, d) is not None)

    @property
    def primary(self) -> str:
        """The first constrained dimension (what a Pareto plot of this target is drawn against)."""
        return self.items()[0][0]

    def to_json(self) -> dict[str, float]:
        return dict(self.items())

    def label(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in self.items())

    @classmethod
    def from_json(cls, obj: "Mapping[str, Any] | Target") -> "Target":
        if isinstance(obj, Target):
            return obj
        if not isinstance(obj, Mapping):
            raise UsageError(f"a target must be an object like {{\"macs\": 0.5}}, got {obj!r}")
        unknown = set(obj) - set(DIMENSIONS)
        if unknown:
            raise UsageError(f"unknown target dimension(s) {sorted(unknown)}; use {', '.join(DIMENSIONS)}")
        return cls(**{k: obj[k] for k in DIMENSIONS if k in obj})

    @staticmethod
    def parse(text: str) -> "Target":
        """`macs=0.5[,params=0.3][,latency=0.5][,size=0.25]` (the CLI's --target syntax)."""
        values: dict[str, float] = {}
        for part in [p for p in text.split(",") if p.strip()]:
            if "=" not in part:
                raise UsageError(f"cannot parse --target '{text}': expected key=value pairs like macs=0.5,size=0.25")
            key, _, raw = part.partition("=")
            key = key.strip().lower()
            if key not in DIMENSIONS:
                raise UsageError(f"unknown target '{key}' in --target '{text}'; use {', '.join(DIMENSIONS)}")
            if key in values:
                raise UsageError(f"target '{key}' given twice in --target '{text}'")
            try:
                values[key] = float(raw)
            except ValueError:
                raise UsageError(f"target {key}={raw!r} is not a number") from None
        if not values:
            raise UsageError(f"cannot parse --target '{text}': expected key=value pairs like macs=0.5")
        return Target(**values)
