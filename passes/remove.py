"""remove: drop a removable unit (a residual branch, or a shape-preserving layer in a chain).

  {"pass": "remove", "block": "b2"}       an id from `onnxcompress inspect`'s removable units

A residual block's output becomes its shortcut; a layer's consumers read the layer's input.
The dropped nodes become dead and the shared cleanup removes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import onnx_graphsurgeon as gs

from onnxcompress.compiler.ir import analyze
from onnxcompress.passes.manager import resolve
from onnxcompress.passes.plan import parse_fields
from onnxcompress.errors import PlanError
from onnxcompress.passes.registry import PassContext, register


@dataclass(frozen=True)
class RemoveParams:
    block: str

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "RemoveParams":
        f = parse_fields(obj, "remove", {"block": str})
        if "block" not in f:
            raise PlanError('remove needs a "block" id (see `onnxcompress inspect`)')
        return cls(f["block"])

    def to_json(self) -> dict[str, Any]:
        return {"block": self.block}


@register("remove", RemoveParams)
def remove(graph: gs.Graph, params: RemoveParams, ctx: PassContext) -> gs.Graph:
    unit = resolve(ctx, analyze(graph), params.block, "block")
    tensors = graph.tensors()
    keep, old = tensors[unit.keep_input], tensors[unit.replaced_output]
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = keep
    graph.cleanup()
    return graph
