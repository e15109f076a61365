"""onnxcompress: a compression compiler for trained CNN classifiers delivered as ONNX.

    import onnxcompress
    result = onnxcompress.compress("model.onnx", "train.npz", target="macs=0.5")
    result.save("student.onnx")

Also: load(), inspect(), apply(), finetune(), evaluate(). The CLI (`onnxcompress ...`) is a thin
layer over these functions.
"""

from __future__ import annotations

__version__ = "0.1.0"

from onnxcompress.api import apply, evaluate, inspect, load  # noqa: E402
from onnxcompress.errors import CompressError  # noqa: E402

__all__ = ["apply", "evaluate", "inspect", "load", "CompressError", "__version__"]
