"""Search targets: resource budgets as fractions of the teacher (DESIGN.md's `--target`).

`Target(macs=0.5)` means "at most half the teacher's MACs". Several dimensions may be combined;
every one that is set must hold. A search serves several targets at once and returns one plan
per target.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from onnxcompress.errors import UsageError

DIMENSIONS = ("macs", "params", "size", "latency")


@dataclass(frozen=True)
class Target:
    """Upper bounds as fractions of the teacher's MACs, parameters, weight bytes and latency
    (batch 1). None = unconstrained."""

    macs: float | None = None
    params: float | None = None
    size: float | None = None
    latency: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) <= 1.0:
                raise UsageError(f"target {f.name}={v!r} must be a fraction of the teacher in (0, 1]")
            object.__setattr__(self, f.name, float(v))
        if self.is_empty:
            raise UsageError("a target needs at least one of macs, params, size, latency (e.g. macs=0.5)")

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
    def from_json(cls, obj: Mapping[str, Any] | "Target") -> "Target":
        if isinstance(obj, Target):
            return obj
        if not isinstance(obj, Mapping):
            raise UsageError(f"a target must be an object like {{\"macs\": 0.5}}, got {obj!r}")
        unknown = set(obj) - set(DIMENSIONS)
        if unknown:
            raise UsageError(f"unknown target dimension(s) {sorted(unknown)}; use {', '.join(DIMENSIONS)}")
        return cls(**{k: obj[k] for k in DIMENSIONS if k in obj})

    @classmethod
    def parse(cls, text: str) -> "Target":
        """`macs=0.5,params=0.3` (the CLI's --target syntax)."""
        out: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            key, sep, value = part.partition("=")
            if not sep:
                raise UsageError(f"--target part '{part}' must look like macs=0.5")
            try:
                out[key.strip()] = float(value)
            except ValueError:
                raise UsageError(f"--target {key.strip()}={value!r} is not a number") from None
        return cls.from_json(out)
