"""subset_classes: keep K of the N outputs, in the order given, by cutting the rows of the final
classifier (Gemm, MatMul or 1x1 Conv head) through a trailing Softmax/Flatten/Reshape/pooling.

  {"pass": "subset_classes", "classes": [3, 1]}

On the kept classes the logits equal the teacher's; a trailing Softmax then normalises over the
kept classes only (what a K-class deployment wants).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.ops import CLASS_TAIL_OPS  # may sit between the classifier and the output
from onnxcompress.compiler.errors import PlanError
from onnxcompress.passes.cut import apply_cut
from onnxcompress.passes.plan import parse_fields
from onnxcompress.passes.registry import PassContext, register


@dataclass(frozen=True)
class SubsetClassesParams:
    classes: tuple[int, ...]

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "SubsetClassesParams":
        f = parse_fields(obj, "subset_classes", {"classes": list})
        classes = f.get("classes")
        if not classes or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes):
            raise PlanError("subset_classes needs \"classes\": a non-empty list of class numbers")
        if len(set(classes)) != len(classes):
            raise PlanError("subset_classes classes must not repeat")
        return cls(tuple(classes))

    def to_json(self) -> dict[str, Any]:
        return {"classes": list(self.classes)}


def subset_classes(graph: gs.Graph, params: SubsetClassesParams, ctx: PassContext) -> gs.Graph:
    analysis = analyze(graph)
    out = graph.outputs[0]
    layout = analysis.tensor_layouts.get(out.name)
    if layout is None or layout.block is not None or len(layout.segments) != 1:
        raise PlanError("subset_classes: cannot trace the class axis of the output back to a classifier layer")
    gid = analysis.space_group[layout.segments[0].space]
    group = analysis.group(gid)
    nodes = {n.name: n for n in graph.nodes}
    others = [m for m in group.members if m not in group.producers and nodes[m].op not in CLASS_TAIL_OPS]
    if len(group.producers) != 1 or others:
        raise PlanError(f"subset_classes: the class axis passes through {others or group.producers}, which it cannot cut")
    n_classes = group.channels
    bad = [c for c in params.classes if c >= n_classes]
    if bad:
        raise PlanError(f"subset_classes: class {bad[0]} is out of range; the model has {n_classes} classes (0..{n_classes - 1})")
    keep = {s: np.asarray(params.classes, dtype=np.int64) for s in group.spaces}
    graph = apply_cut(graph, analysis, keep)
    if out.shape is not None:
        shape = list(out.shape)
        shape[layout.axis] = len(params.classes)
        out.shape = shape
    return graph


register("subset_classes", SubsetClassesParams, changes_outputs=True)(subset_classes)
