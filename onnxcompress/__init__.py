"""onnxcompress: a compression compiler for trained CNN classifiers delivered as ONNX.

    import onnxcompress
    result = onnxcompress.compress("model.onnx", "train.npz", target="macs=0.5")
    result.save("student.onnx")

Also: load(), inspect(), apply(), finetune(), evaluate(). The CLI (`onnxcompress ...`) is a thin
layer over these functions. Attributes are imported on first use, so `onnxcompress --help` and
error messages come back quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "apply": "onnxcompress.api",
    "evaluate": "onnxcompress.api",
    "inspect": "onnxcompress.api",
    "load": "onnxcompress.api",
    "finetune": "onnxcompress.api",
    "compress": "onnxcompress.api",
    "CompressResult": "onnxcompress.pipeline",
    "Plan": "onnxcompress.passes.plan",
    "Target": "onnxcompress.search.targets",
    "CompressError": "onnxcompress.errors",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'onnxcompress' has no attribute '{name}'")
