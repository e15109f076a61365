"""Typed configuration of a compression job, validated once at the edge (CLI / API)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from onnxcompress.errors import UsageError

DIMENSIONS = ("macs", "params", "size", "latency")
TARGET_KEYS = DIMENSIONS


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


@dataclass(frozen=True)
class CompressConfig:
    targets: tuple[Target, ...]
    max_drop: float = 1.0
    classes: tuple[int, ...] | None = None
    agent: str | None = None  # None: chosen from the target
    episodes: int | None = None  # None: the agent's default for the model size
    finetune_epochs: int = 3
    seed: int = 0
    workers: int = 1
    executor: str = "local"
    ray_address: str | None = None
    val_size: int = 1000
    calib_size: int = 256
    checkpoint_dir: Path | None = None
    progress: bool = True
    families: int = 3  # structure families explored (compiler/structure.py); 1 = channels only
    # kept channel counts are multiples of this when the budget allows; None: the NCHWc block of
    # onnxruntime on this CPU (compiler/hardware.py), 1: any width (runtimes without blocked
    # kernels, e.g. microcontrollers, where only MACs and bytes count)
    channel_multiple: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.targets:
            raise UsageError("give at least one --target, e.g. --target macs=0.5")
        if not (0.0 <= self.max_drop <= 100.0):
            raise UsageError(f"--max-drop {self.max_drop} must be between 0 and 100 accuracy points")
        if self.finetune_epochs < 0:
            raise UsageError("--finetune-epochs must be >= 0")
        if self.episodes is not None and self.episodes < 1:
            raise UsageError("--episodes must be >= 1")
        if self.workers < 1:
            raise UsageError("--workers must be >= 1")
        if self.families < 1:
            raise UsageError("--families must be >= 1")
        if self.channel_multiple is not None and self.channel_multiple < 1:
            raise UsageError(f"--channel-multiple must be >= 1 (1: any width), got {self.channel_multiple}")
        if self.executor not in ("local", "ray"):
            raise UsageError(f"--executor must be local or ray, got '{self.executor}'")
        if self.classes is not None and (len(self.classes) == 0 or len(set(self.classes)) != len(self.classes) or min(self.classes) < 0):
            raise UsageError("--classes must be distinct non-negative class numbers, e.g. 0,3,7")


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got '{text}'") from None


def parse_float_list(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what} must be comma-separated numbers, got '{text}'") from None
    if not values:
        raise UsageError(f"{what} needs at least one number")
    return values
