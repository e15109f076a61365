"""Typed configuration of a compression job, validated once at the edge (CLI / API)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from onnxcompress.errors import UsageError

TARGET_KEYS = ("macs", "params", "latency", "size")


@dataclass(frozen=True)
class Target:
    """Fractions of the teacher's cost that the student may have (None: unconstrained)."""

    macs: float | None = None
    params: float | None = None
    latency: float | None = None
    size: float | None = None

    def __post_init__(self) -> None:
        values = [getattr(self, k) for k in TARGET_KEYS]
        if all(v is None for v in values):
            raise UsageError("a target needs at least one of macs=, params=, latency=, size=")
        for key in TARGET_KEYS:
            v = getattr(self, key)
            if v is not None and not (0.0 < v <= 1.0):
                raise UsageError(f"target {key}={v} is impossible: it must be a fraction of the teacher in (0, 1]")

    @staticmethod
    def parse(text: str) -> "Target":
        """`macs=0.5[,params=0.3][,latency=0.5][,size=0.25]`."""
        values: dict[str, float] = {}
        for part in [p for p in text.split(",") if p.strip()]:
            if "=" not in part:
                raise UsageError(f"cannot parse --target '{text}': expected key=value pairs like macs=0.5,size=0.25")
            key, _, raw = part.partition("=")
            key = key.strip().lower()
            if key not in TARGET_KEYS:
                raise UsageError(f"unknown target '{key}' in --target '{text}'; use {', '.join(TARGET_KEYS)}")
            if key in values:
                raise UsageError(f"target '{key}' given twice in --target '{text}'")
            try:
                values[key] = float(raw)
            except ValueError:
                raise UsageError(f"target {key}={raw!r} is not a number") from None
        if not values:
            raise UsageError(f"cannot parse --target '{text}': expected key=value pairs like macs=0.5")
        return Target(**values)

    def to_json(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in TARGET_KEYS if getattr(self, k) is not None}

    def label(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in self.to_json().items())


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
