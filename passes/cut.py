"""Cutting channels out of a graph, shared by prune_channels and subset_classes: every constant
slice, depthwise `group` attribute and Reshape target that the analysis recorded for the touched
channel spaces is rewritten in one go."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxcompress.compiler.ir import Analysis


def apply_cut(graph: gs.Graph, analysis: Analysis, keep: dict[int, np.ndarray]) -> gs.Graph:
    """`keep` maps channel space -> kept channel indices (spaces not in it are untouched)."""
    if not keep:
        return graph
    nodes = {n.name: n for n in graph.nodes}
    touched = set(keep)
    for s in analysis.slices:
        if not touched.intersection(s.layout.spaces):
            continue
        node = nodes[s.node]
        tensor = node.inputs[s.input_index]
        idx = s.layout.indices(keep)
        tensor.values = np.ascontiguousarray(np.take(tensor.values, idx, axis=s.axis))
    for fix in analysis.group_attr_fixes:
        if touched.intersection(fix.layout.spaces):
            nodes[fix.node].attrs["group"] = int(len(fix.layout.indices(keep)))
    for fix in analysis.reshape_fixes:
        node = nodes[fix.node]
        target = np.array(node.inputs[1].values, dtype=np.int64).reshape(-1)
        target[: fix.keep_prefix] = 0  # copy those dims from the input
        if fix.flatten_rest:
            target[fix.keep_prefix :] = -1
        node.inputs[1].values = target
    return graph
