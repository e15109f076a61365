"""The bridge's view of ONNX nodes: parsed once into `NodeInfo`, run by one handler per op type
(HANDLERS, filled by handlers.py at import, read-only after), with the dtype conversions every
part of the bridge shares."""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor

from onnxcompress.compiler.errors import ModelError, UnsupportedOpError

# ---------------------------------------------------------------------------------------------
# Nodes and the handler table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeInfo:
    """One ONNX node, with attributes parsed to Python values once."""

    index: int
    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]
    opset: int

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def input(self, i: int) -> str:
        """Name of input i, '' when absent (optional inputs)."""
        return self.inputs[i] if i < len(self.inputs) else ""


@dataclass
class RunContext:
    """Per-call state of one interpretation. `bn_sums` collects exact BatchNormalization input
    statistics during recalibration (node name -> [count, sum, sum of squares], float64)."""

    training: bool
    bn_sums: dict[str, list[Any]] | None = None


Handler = Callable[[NodeInfo, list[Any], RunContext], list[Tensor]]
HANDLERS: dict[str, Handler] = {}


def handles(*names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for name in names:
            HANDLERS[name] = fn
        return fn

    return register


def supported_ops() -> frozenset[str]:
    """Op types (default ONNX domain) the bridge can run."""
    return frozenset(HANDLERS)


FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
)

TORCH_DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.FLOAT16: torch.float32,  # computed in float32, see module docstring
    onnx.TensorProto.DOUBLE: torch.float32,
    onnx.TensorProto.BFLOAT16: torch.float32,
    onnx.TensorProto.BOOL: torch.bool,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.UINT16: torch.int64,
    onnx.TensorProto.UINT32: torch.int64,
    onnx.TensorProto.UINT64: torch.int64,
}


def parse_attrs(node: onnx.NodeProto) -> Mapping[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[a.name] = value
    return types.MappingProxyType(out)


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ModelError("the model imports no default-domain opset")


def to_tensor(arr: np.ndarray) -> Tensor:
    if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16":
        return torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))
    if arr.dtype == np.bool_:
        return torch.from_numpy(arr.copy())
    if arr.dtype in (np.uint16, np.uint32, np.uint64):
        return torch.from_numpy(arr.astype(np.int64))
    if arr.dtype.kind in "iu":
        return torch.from_numpy(arr.copy())
    raise ModelError(f"tensor of dtype {arr.dtype} cannot be represented in torch")



def constant_value(node: NodeInfo) -> np.ndarray:
    attrs = node.attrs
    if "value" in attrs:
        return np.asarray(attrs["value"])
    if "value_float" in attrs:
        return np.asarray(attrs["value_float"], np.float32)
    if "value_floats" in attrs:
        return np.asarray(attrs["value_floats"], np.float32)
    if "value_int" in attrs:
        return np.asarray(attrs["value_int"], np.int64)
    if "value_ints" in attrs:
        return np.asarray(attrs["value_ints"], np.int64)
    raise UnsupportedOpError(f"the PyTorch bridge does not support Constant {node.name!r} with {sorted(attrs)}")

