"""Builds the bundled demo dataset: a class-balanced slice of Fashion-MNIST.

    python -m onnxcompress.models.make_demo_data --source ../shared/realdata/data

reads fashion_mnist_{train,test}.npz from the source folder and writes
models/data/fashion_mnist_demo_{train,test}.npz (x uint8 (N,28,28), y int64): 500 training and
200 test images per class, drawn without replacement with a fixed seed and kept in their original
order. Same source + same seed = byte-identical arrays.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
TRAIN_PER_CLASS = 500
TEST_PER_CLASS = 200
SEED = 0


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """`per_class` indices of each label, sorted so that the slice keeps the source order."""
    chosen = []
    for label in np.unique(labels):
        candidates = np.flatnonzero(labels == label)
        if len(candidates) < per_class:
            raise ValueError(f"class {label} has only {len(candidates)} images, {per_class} requested")
        chosen.append(rng.choice(candidates, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def write_slice(source: Path, target: Path, per_class: int, rng: np.random.Generator) -> None:
    with np.load(source) as data:
        x, y = data["x"], data["y"]
    keep = balanced_indices(y, per_class, rng)
    np.savez_compressed(target, x=x[keep].astype(np.uint8), y=y[keep].astype(np.int64))
    print(f"{target}: {len(keep)} images from {source}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--source", type=Path, required=True, help="folder with fashion_mnist_{train,test}.npz")
    parser.add_argument("--output", type=Path, default=DATA_DIR, help="folder to write the slices to")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(SEED)  # one generator, train then test: the order is part of the recipe
    args.output.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        target = args.output / f"fashion_mnist_demo_{split}.npz"
        write_slice(args.source / f"fashion_mnist_{split}.npz", target, per_class, rng)
    return 0


if __name__ == "__main__":
    sys.exit(main())
