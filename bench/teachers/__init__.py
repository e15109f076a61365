"""The teachers benchmarks compress, by name, so every benchmark uses the same ones.

`teacher_path(name)` returns an ONNX file: the real MLPerf Tiny ResNet-8 from ../shared/realdata,
the bundled demo teacher, or a reference architecture trained once by
`onnxcompress.models.train.cached_teacher` and read from bench/.cache/teachers afterwards.
`python -m bench.teachers [NAME ...]` trains the missing ones ahead of a benchmark run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.common import RESNET8
from onnxcompress.models.demo import demo_teacher_path


@dataclass(frozen=True)
class TrainedTeacher:
    """A reference architecture trained by models/train.py on a named dataset."""

    arch: str
    dataset: str  # a name known to onnxcompress.models.train.dataset_paths
    epochs: int
    seed: int = 0


# CIFAR-10 here is the 10k-image JPEG training subset of ../shared/realdata. Measured on the shared
# 2-core machine with one thread: ResNet-20 trains at ~27 s per epoch when the other core is idle
# (30 epochs: 816 s, 2026-12-03) and at 90-240 s per epoch when other jobs share the cores: run
# `python -m bench.teachers` before a benchmark. Add teachers here with their measured cost.
TRAINED: dict[str, TrainedTeacher] = {
    "resnet20_cifar10": TrainedTeacher("resnet20", "cifar10", epochs=30),
    # measured 2026-12-01: see bench/teachers/README in BENCHMARKS.md (peers) for its time and accuracy
    "mobilenetv2_cifar10": TrainedTeacher("mobilenetv2", "cifar10", epochs=15),
}
FIXED: dict[str, Path] = {"resnet8_mlperf": RESNET8, "demo_cnn_fashion": demo_teacher_path()}
NAMES = [*FIXED, *TRAINED]


def teacher_path(name: str) -> Path:
    """The ONNX teacher called `name` (one of NAMES); trains it on first use."""
    if name in FIXED:
        return FIXED[name]
    if name not in TRAINED:
        raise ValueError(f"unknown teacher {name!r}; choose one of {', '.join(NAMES)}")
    # Imported here: torch is only needed when a teacher has to be trained or looked up.
    from onnxcompress.models.train import cached_teacher

    spec = TRAINED[name]
    return cached_teacher(spec.arch, spec.dataset, spec.epochs, spec.seed)
