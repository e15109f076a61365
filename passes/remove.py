"""remove: drop a removable unit (a residual branch, or a shape-preserving layer in a chain).

  {"pass": "remove", "block": "b2"}       an id from `onnxcompress inspect`'s removable units
  option "reconstruct": true|false (default: when calibration data is given)

A residual block's output becomes its shortcut; a layer's consumers read the layer's input.
The dropped nodes become dead and the shared cleanup removes them.

With calibration data, the layers that now read the shortcut (directly or through an
activation/pooling) are re-fitted by least squares to reproduce, from the shortcut, what they
computed from the block's output (passes/reconstruct.py): the next layer absorbs as much of the
removed block as a linear map can. On the MLPerf Tiny ResNet-8 this keeps a student with its
first residual block removed at ~40 % top-1 before fine-tuning instead of 15 %, which is what lets
the search compare removals with channel cuts without fine-tuning each candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import onnx_graphsurgeon as gs

from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.onnx_io import export_graph
from onnxcompress.passes.manager import resolve
from onnxcompress.passes.plan import parse_fields
from onnxcompress.compiler.errors import PlanError
from onnxcompress.passes.reconstruct import downstream_layers, refit
from onnxcompress.passes.registry import PassContext, register


@dataclass(frozen=True)
class RemoveParams:
    block: str
    reconstruct: bool | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "RemoveParams":
        f = parse_fields(obj, "remove", {"block": str, "reconstruct": bool})
        if "block" not in f:
            raise PlanError('remove needs a "block" id (see `onnxcompress inspect`)')
        return cls(f["block"], f.get("reconstruct"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"block": self.block}
        if self.reconstruct is not None:
            out["reconstruct"] = self.reconstruct
        return out


@register("remove", RemoveParams)
def remove(graph: gs.Graph, params: RemoveParams, ctx: PassContext) -> gs.Graph:
    unit = resolve(ctx, analyze(graph), params.block, "block")
    do_fit = params.reconstruct if params.reconstruct is not None else ctx.calibration is not None
    if do_fit and ctx.calibration is None:
        raise PlanError("remove with reconstruct=true needs calibration data (pass --data)")
    teacher = export_graph(graph.copy()) if do_fit else None
    tensors = graph.tensors()
    keep, old = tensors[unit.keep_input], tensors[unit.replaced_output]
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = keep
    graph.cleanup().toposort()
    if do_fit:
        graph = refit(graph, teacher, downstream_layers(graph, keep.name), ctx.calibration, ctx.seed)
    return graph
