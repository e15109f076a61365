"""Paths of the bundled demo teacher and data, valid from a source checkout and from an installed
wheel alike. Importing this module needs neither torch nor onnx."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_TEACHER = "demo_teacher.onnx"
DEMO_TRAIN = "fashion_mnist_demo_train.npz"
DEMO_TEST = "fashion_mnist_demo_test.npz"


def _data_file(name: str) -> Path:
    # Package data of a regular (unzipped) install is a real file, so the Traversable converts to
    # a Path that numpy, onnx and onnxruntime can open directly.
    path = Path(str(resources.files("onnxcompress.models").joinpath("data", name)))
    if not path.is_file():
        raise FileNotFoundError(f"bundled demo file {path} is missing; reinstall onnxcompress")
    return path


def demo_teacher_path() -> Path:
    """The pre-trained demo teacher: demo_cnn on Fashion-MNIST, BN folded, NCHW (N,1,28,28)."""
    return _data_file(DEMO_TEACHER)


def demo_data_paths() -> tuple[Path, Path]:
    """(train, test) npz slices of Fashion-MNIST: x uint8 (N,28,28), y int64."""
    return _data_file(DEMO_TRAIN), _data_file(DEMO_TEST)
