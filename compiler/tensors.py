"""Reading onnx-graphsurgeon constants without keeping a copy of every weight in memory.

onnx-graphsurgeon imports initializers lazily (`gs.LazyValues`: the TensorProto, its shape and
type) and loads a constant's values into numpy the first time `Constant.values` is read, keeping
them in the graph from then on. The proto the graph was imported from holds the weights already, so
every load is one more copy: on a 550 MB VGG-16 the channel analysis alone held a second copy of
every weight, although it only needs their shapes (issue 16). The helpers here read what is needed:

- `const_view(t)`: what the channel analysis and the cost model read of a constant. The values
  (a numpy array, as `Constant.values` gives them) for a small constant or one already loaded;
  for a large one not loaded yet a `ConstMeta` with its shape, rank, size and type, which loads
  the values only when something else is asked of it (so a caller that reads values is never
  wrong, only slower);
- `read_values(t)`: a constant's values for reading, without storing them in the graph (a pass that
  scores every weight before cutting some keeps one weight at a time in memory, not all of them);
- `serialized_tensor_size(tensor)`: `tensor.ByteSize()` without serialising its raw data.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

# constants up to this many bytes are read by value (shape targets, pads, axes, per-channel
# parameters); larger ones (weights) by their shape and type
VALUE_MAX_BYTES = 1 << 16


def _lazy_tensor(t: gs.Constant) -> onnx.TensorProto | None:
    """The TensorProto behind a constant whose values are not loaded yet (None otherwise)."""
    lazy = t._values  # noqa: SLF001 - onnx-graphsurgeon's own attribute; reading it loads nothing
    if isinstance(lazy, LazyValues) and isinstance(lazy.tensor, onnx.TensorProto):
        return lazy.tensor
    return None


def _np_dtype(tensor: onnx.TensorProto) -> np.dtype:
    """The dtype numpy_helper.to_array gives the tensor's values."""
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))


class ConstMeta:
    """Shape, rank, size and dtype of a large constant whose values are not loaded; anything else
    (`np.asarray(m)`, `m.reshape(...)`, `m[0]`) loads them (through `Constant.values`)."""

    __slots__ = ("_constant", "shape", "dtype")

    def __init__(self, constant: gs.Constant, tensor: onnx.TensorProto) -> None:
        self._constant = constant
        self.shape = tuple(int(d) for d in tensor.dims)
        self.dtype = _np_dtype(tensor)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __array__(self, dtype=None, copy=None):  # noqa: ANN001 - numpy's protocol
        values = self._constant.values
        return values if dtype is None else values.astype(dtype)

    def __len__(self) -> int:
        return len(self._constant.values)

    def __getitem__(self, key):  # noqa: ANN001
        return self._constant.values[key]

    def __iter__(self):
        return iter(self._constant.values)

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "_constant":  # copy/pickle protocols, a half-built object
            raise AttributeError(name)
        return getattr(self._constant.values, name)

    def __repr__(self) -> str:
        return f"ConstMeta(shape={self.shape}, dtype={self.dtype})"


def const_view(t: gs.Tensor) -> np.ndarray | ConstMeta | None:
    """None for a non-constant; else the values, or a ConstMeta for a large unloaded constant (see
    the module docstring)."""
    if not isinstance(t, gs.Constant):
        return None
    tensor = _lazy_tensor(t)
    if tensor is not None:
        try:
            meta = ConstMeta(t, tensor)
        except Exception:  # noqa: BLE001 - a type numpy cannot hold: gs's own loading decides
            return t.values
        if meta.nbytes > VALUE_MAX_BYTES:
            return meta
    return t.values


def read_values(t: gs.Constant) -> np.ndarray:
    """A constant's values for reading (possibly a read-only view), not stored in the graph when
    they were not loaded yet."""
    tensor = _lazy_tensor(t)
    if tensor is None:
        return t.values
    if tensor.data_location != onnx.TensorProto.EXTERNAL and tensor.HasField("raw_data") and _np_dtype(tensor).kind in "biuf":
        return numpy_helper.to_array(tensor)  # a view of the raw bytes (gs would copy them once more)
    return t._values.load()  # noqa: SLF001


def varint_size(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def copy_set_fields(src, dst, names: tuple[str, ...]) -> None:  # noqa: ANN001 - protobuf messages
    for name in names:
        if src.HasField(name):
            value = getattr(src, name)
            if hasattr(value, "CopyFrom"):
                getattr(dst, name).CopyFrom(value)
            else:
                setattr(dst, name, value)


def serialized_tensor_size(tensor: onnx.TensorProto) -> int:
    """Serialised bytes of a TensorProto (`tensor.ByteSize()`, which protobuf's Python runtime
    computes by serialising the message), without serialising its raw data (whose length is its
    element count times the element size)."""
    if not tensor.HasField("raw_data"):
        return tensor.ByteSize()
    stub = onnx.TensorProto()
    copy_set_fields(tensor, stub, ("name", "data_type", "doc_string", "segment", "data_location"))
    stub.dims.extend(tensor.dims)
    stub.external_data.extend(tensor.external_data)
    stub.metadata_props.extend(tensor.metadata_props)
    n = int(np.prod(tensor.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return stub.ByteSize() + 1 + varint_size(n) + n  # field 9 (raw_data): one tag byte, length, data
