"""What the search measures and predicts: `Metrics` of an evaluated candidate, `Cost` of a
predicted one, and `Budget`, a target turned into absolute numbers for one teacher.

`size_bytes` everywhere means the bytes of the parameters at their bit widths (float32 = 4 bytes,
see compiler/cost.py BYTES_PER_ELEMENT): what a quantized student would store. The serialized
ONNX file adds a small, roughly constant overhead for the graph structure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcompress.compiler.cost import BYTES_PER_ELEMENT
from onnxcompress.search.targets import Target
from onnxcompress.compiler.ops import LAYER_OPS



@dataclass(frozen=True)
class Metrics:
    """One evaluated candidate. `feasible` is False when the plan could not be applied or run (the
    search records it and moves on; `error` says why); its accuracy is then 0."""

    accuracy: float
    macs: int
    params: int
    size_bytes: int
    latency_ms: float | None = None
    feasible: bool = True
    error: str | None = None

    @classmethod
    def infeasible(cls, error: str) -> "Metrics":
        return cls(accuracy=0.0, macs=0, params=0, size_bytes=0, latency_ms=None, feasible=False, error=error)

    def value(self, dimension: str) -> float | None:
        """The resource a target dimension constrains (macs, params, size, latency)."""
        return {
            "macs": float(self.macs),
            "params": float(self.params),
            "size": float(self.size_bytes),
            "latency": self.latency_ms,
        }[dimension]

    def within(self, target: Target, teacher: "Metrics") -> bool:
        """Feasible and every constrained dimension at most its fraction of the teacher's. A
        latency target needs a measured latency (None never satisfies it)."""
        if not self.feasible:
            return False
        for dim, frac in target.items():
            mine, ref = self.value(dim), teacher.value(dim)
            if mine is None or ref is None:
                return False
            # a tiny relative slack absorbs float rounding of the fraction, not real overshoot
            if mine > frac * ref * (1.0 + 1e-9):
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "accuracy": self.accuracy,
            "macs": self.macs,
            "params": self.params,
            "size_bytes": self.size_bytes,
            "latency_ms": self.latency_ms,
            "feasible": self.feasible,
        }
        if self.error is not None:
            out["error"] = self.error
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Metrics":
        lat = obj.get("latency_ms")
        return cls(
            accuracy=float(obj["accuracy"]),
            macs=int(obj["macs"]),
            params=int(obj["params"]),
            size_bytes=int(obj["size_bytes"]),
            latency_ms=None if lat is None else float(lat),
            feasible=bool(obj.get("feasible", True)),
            error=obj.get("error"),
        )


@dataclass(frozen=True)
class Cost:
    """A candidate's resources predicted without rewriting (SearchCost + the latency model)."""

    macs: int
    params: int
    size_bytes: int
    latency_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"macs": self.macs, "params": self.params, "size_bytes": self.size_bytes, "latency_ms": self.latency_ms}


@dataclass(frozen=True)
class Budget:
    """A target in absolute units for one teacher (None = unconstrained)."""

    macs: int | None = None
    params: int | None = None
    size_bytes: int | None = None
    latency_ms: float | None = None

    @classmethod
    def of(cls, target: Target, teacher: Cost) -> "Budget":
        if target.latency is not None and teacher.latency_ms is None:
            raise ValueError("a latency target needs the teacher's latency (a latency model)")
        return cls(
            macs=None if target.macs is None else int(math.floor(target.macs * teacher.macs + 1e-6)),
            params=None if target.params is None else int(math.floor(target.params * teacher.params + 1e-6)),
            size_bytes=None if target.size is None else int(math.floor(target.size * teacher.size_bytes + 1e-6)),
            latency_ms=None if target.latency is None else target.latency * float(teacher.latency_ms),  # type: ignore[arg-type]
        )

    def allows(self, cost: Cost) -> bool:
        if self.macs is not None and cost.macs > self.macs:
            return False
        if self.params is not None and cost.params > self.params:
            return False
        if self.size_bytes is not None and cost.size_bytes > self.size_bytes:
            return False
        if self.latency_ms is not None and (cost.latency_ms is None or cost.latency_ms > self.latency_ms + 1e-12):
            return False
        return True


def weight_bytes(model: onnx.ModelProto, bits_by_node: Mapping[str, int]) -> int:
    """Bytes of the parameters of `model` when the layers in `bits_by_node` store their weight and
    bias at that many bits and everything else stays float32. Weights behind a DequantizeLinear
    (a QDQ graph) are counted at the layer's bits; quantization scales and zero points are not
    parameters."""
    graph = gs.import_onnx(model)
    counted: set[str] = set()
    total = 0.0
    for node in graph.nodes:
        if node.op not in LAYER_OPS or len(node.inputs) < 2:
            continue
        per = BYTES_PER_ELEMENT[int(bits_by_node.get(node.name, 32))]
        for t in node.inputs[1:3]:
            src = t
            if not isinstance(src, gs.Constant) and src.inputs and src.inputs[0].op == "DequantizeLinear":
                src = src.inputs[0].inputs[0]
            if isinstance(src, gs.Constant) and src.name not in counted:
                counted.add(src.name)
                total += int(np.prod(src.shape)) * per
    dq_params = {t.name for n in graph.nodes if n.op == "DequantizeLinear" for t in n.inputs[1:]}
    for name, t in graph.tensors().items():
        if isinstance(t, gs.Constant) and name not in counted and name not in dq_params and np.issubdtype(t.dtype, np.floating):
            total += int(np.prod(t.shape)) * 4.0
    return int(round(total))
