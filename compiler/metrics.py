"""Top-1: the accuracy every part of onnxcompress reports (DESIGN.md: top-1 against labels, or
top-1 agreement with the teacher's predictions when the data has none). One definition, so that
the evaluator, the trainer, the pipeline, `eval` and the preprocessing probe agree to the bit."""

from __future__ import annotations

import numpy as np


def predicted_classes(scores: np.ndarray) -> np.ndarray:
    """The top-1 class of each row of `scores` ((N, classes), or (N, classes, 1, 1) and the like)."""
    scores = np.asarray(scores)
    return scores.reshape(len(scores), -1).argmax(1)


def top1(scores: np.ndarray, target: np.ndarray) -> float:
    """The fraction of rows of `scores` whose top-1 class is `target`'s: labels (accuracy), or
    another model's predicted classes (agreement)."""
    return float(np.mean(predicted_classes(scores) == np.asarray(target)))
