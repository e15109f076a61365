"""Structure families: which residual blocks `compress` removes before it shrinks channels (N2N's
stage 1), and how it chooses between them: by a short KD fine-tune ("probe"), not by accuracy
without fine-tuning.

Why: the channel search judges candidates without fine-tuning (least-squares refits make that
informative for channel cuts), but that misjudges removals. On the MLPerf Tiny ResNet-8 at
<= 0.5x MACs (measured, bench/results/e2e.md): the best channel-only plan the search found scores
50 % top-1 before fine-tuning and 72.9 % after 5 epochs; removing the first residual block and
halving one 32-channel group scores 37 % before and 76.6 % after, and runs in 0.47x the teacher's
time instead of 0.84x (onnxruntime's NCHWc kernels gain little from thinning 16-channel layers,
while a removed block costs nothing). A one-epoch probe ranks such families the way the full
fine-tune does at a fraction of its cost.

A family is a set of removed units; `families` proposes the empty set and each of the largest
residual blocks alone. `compress` runs one channel search per family (the units fixed as
removed, `SearchConfig.removed`), probes each family's best plan per target, and keeps the best
probe (ties: the fewer MACs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx

from onnxcompress.compiler.data import Dataset
from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.onnx_io import import_graph
from onnxcompress.compiler.trainer import FinetuneConfig, finetune

PROBE_EPOCHS = 1
PROBE_SAMPLES = 4000  # training samples a probe sees at most (its cost is one pass over them)


@dataclass(frozen=True)
class Probe:
    """A family's best plan for one target and how it scored."""

    removed: tuple[str, ...]
    plan: dict
    search_accuracy: float | None  # without fine-tuning (the search's evaluation)
    probe_accuracy: float  # validation accuracy after the probe fine-tune
    macs: int
    speedup: float | None = None  # measured batch-32 speed-up over the base (teacher), when timed

    def to_json(self) -> dict:
        return {"removed": list(self.removed), "plan": self.plan, "search_accuracy": self.search_accuracy,
                "probe_accuracy": round(self.probe_accuracy, 6), "macs": int(self.macs),
                "speedup": None if self.speedup is None else round(self.speedup, 3)}


def families(model: onnx.ModelProto, limit: int) -> list[tuple[str, ...]]:
    """The empty family and, for `limit` > 1, single removals of the `limit - 1` residual blocks
    with the most MACs (the ones whose removal saves the most time)."""
    if limit <= 1:
        return [()]
    blocks = [u for u in analyze(import_graph(model)).removable if u.kind == "residual_block"]
    blocks.sort(key=lambda u: (-u.macs, u.id))
    return [()] + [(u.id,) for u in blocks[: limit - 1]]


def probe_accuracy(student: onnx.ModelProto, teacher: onnx.ModelProto, train: Dataset, val: Dataset, config: FinetuneConfig,
                   samples: int = PROBE_SAMPLES) -> float:
    """Validation accuracy of `student` after a short KD fine-tune with `config`'s recipe (its
    epochs replaced by PROBE_EPOCHS over at most `samples` training samples)."""
    if len(train) > samples:  # a seeded random subset, in the data's order
        train = train.take(np.sort(np.random.default_rng(config.seed).permutation(len(train))[:samples]))
    probe = replace(config, epochs=PROBE_EPOCHS, patience=None)
    _, result = finetune(student, teacher, train, val, probe, progress=False)
    last = result.history[-1].val_accuracy if result.history else None
    return float(last if last is not None else (result.best_val_accuracy or 0.0))


def tied_with_best(probes: list[Probe], val_size: int) -> list[int]:
    """Indices of the probes within one standard error (at least one image) of the best."""
    best = max(p.probe_accuracy for p in probes)
    se = max(1.0 / max(val_size, 1), float(np.sqrt(max(best * (1.0 - best), 0.0) / max(val_size, 1))))
    return [i for i, p in enumerate(probes) if p.probe_accuracy >= best - se]


def choose(probes: list[Probe], val_size: int = 1000, speed: dict[int, float] | None = None) -> Probe:
    """The best probe accuracy. Among the probes within one standard error of the best (a probe
    is a short fine-tune scored on `val_size` images: closer than that is noise), the fastest by
    `speed` (probe index -> measured speed-up over the teacher; the student is for running
    faster, and a removed block is real time while thin layers often are not), else the fewest
    MACs."""
    tied = tied_with_best(probes, val_size)
    if speed:
        return probes[max(tied, key=lambda i: (speed.get(i, 0.0), -probes[i].macs))]
    return probes[max(tied, key=lambda i: (round(probes[i].probe_accuracy, 3), -probes[i].macs))]
