"""Typed configuration of a compression job, validated once at the edge (CLI / API)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence

from onnxcompress.compiler.device import DEVICES, PRECISIONS
from onnxcompress.compiler.errors import UsageError
from onnxcompress.search.targets import Target


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
    families: int = 3  # structure families explored (search/structure.py); 1 = channels only
    # kept channel counts are multiples of this when the budget allows; None: the NCHWc block of
    # onnxruntime on this CPU (compiler/hardware.py), 1: any width (runtimes without blocked
    # kernels, e.g. microcontrollers, where only MACs and bytes count)
    channel_multiple: int | None = None
    device: str = "auto"  # auto | cpu | cuda: where fine-tuning and candidate evaluation run (compiler/device.py)
    # auto | fp32 | bf16: the arithmetic of fine-tuning (compiler/device.py resolve_precision;
    # auto: bf16 where the device has it natively)
    train_precision: str = "auto"
    time_budget_s: float | None = None  # wall-clock budget of the whole run (onnxcompress/budget.py); None: the defaults above
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the forms users write (a target string, a list of classes, a str path) normalised once
        object.__setattr__(self, "targets", tuple(t if isinstance(t, Target) else Target.parse(t) for t in self.targets))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
        if self.checkpoint_dir is not None:
            object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))
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
        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.train_precision not in PRECISIONS:
            raise UsageError(f"--train-precision must be one of {', '.join(PRECISIONS)}, got {self.train_precision!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise UsageError("--time-budget must be positive")
        if self.channel_multiple is not None and self.channel_multiple < 1:
            raise UsageError(f"--channel-multiple must be >= 1 (1: any width), got {self.channel_multiple}")
        if self.executor not in ("local", "ray"):
            raise UsageError(f"--executor must be local or ray, got '{self.executor}'")
        if self.classes is not None and (len(self.classes) == 0 or len(set(self.classes)) != len(self.classes) or min(self.classes) < 0):
            raise UsageError("--classes must be distinct non-negative class numbers, e.g. 0,3,7")


    @classmethod
    def from_options(cls, target: "str | Target | Sequence[str | Target]", **options: Any) -> "CompressConfig":
        """A config from `target` (one or several, as Target or `macs=0.5` strings) and any other
        fields by name; an unknown name is a TypeError that lists the known ones."""
        _check_option_names(options)
        return cls(targets=_targets(target), **options)

    def with_options(self, target: "str | Target | Sequence[str | Target] | None" = None, **options: Any) -> "CompressConfig":
        """This config with `target` (when given) and the named fields replaced."""
        _check_option_names(options)
        return replace(self, **options, **({"targets": _targets(target)} if target is not None else {}))


def _targets(target: "str | Target | Sequence[str | Target]") -> tuple:
    return tuple(target) if isinstance(target, (list, tuple)) else (target,)


def _check_option_names(options: dict[str, Any]) -> None:
    known = {f.name for f in fields(CompressConfig)} - {"targets"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown compress option(s) {', '.join(unknown)}; the options are the fields of CompressConfig: {', '.join(sorted(known))}")


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
