"""The op table (op type -> channel rule and flags) and the helpers the rules share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from onnxcompress.compiler.ops.layout import ChannelLayout, Rule
from onnxcompress.compiler.tensors import ConstMeta, const_view


@dataclass(frozen=True)
class OpInfo:
    rule: Rule
    quantizable: bool = False  # has a weight that the quantize pass can store in fewer bits
    layer: bool = False  # a layer in the cost model's sense (Conv / Gemm / MatMul)


OP_TABLE: dict[str, OpInfo] = {}


def _register(*ops: str, quantizable: bool = False, layer: bool = False) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        for op in ops:
            OP_TABLE[op] = OpInfo(fn, quantizable=quantizable, layer=layer)
        return fn

    return deco


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def rank_of(t: gs.Tensor) -> int | None:
    if isinstance(t, gs.Constant):
        return len(t.shape)  # a constant's shape is known without loading its values
    return len(t.shape) if t.shape is not None else None


def shape_of(t: gs.Tensor) -> tuple | None:
    if isinstance(t, gs.Constant):
        return tuple(int(d) for d in t.shape)
    return tuple(t.shape) if t.shape is not None else None


def const(t: gs.Tensor) -> np.ndarray | ConstMeta | None:
    """A constant's values; for a large one not loaded yet (a weight), only its shape and dtype
    (compiler/tensors.py: the analysis must not copy every weight into memory)."""
    return const_view(t)


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _tracked(ins: Sequence[ChannelLayout | None]) -> list[ChannelLayout]:
    return [l for l in ins if l is not None]


def is_depthwise(node: gs.Node) -> bool:
    w = const(node.inputs[1]) if len(node.inputs) > 1 else None
    group = int(node.attrs.get("group", 1))
    return w is not None and group > 1 and w.shape[1] == 1 and w.shape[0] == group


def rule_for(op: str) -> OpInfo | None:
    return OP_TABLE.get(op)
