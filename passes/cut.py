"""Cutting channels out of a graph, shared by prune_channels and subset_classes: every constant
slice, depthwise `group` attribute, Reshape target (flatten, GroupNorm), channel shuffle (then a
Gather), channel Pad, Slice and Split that the analysis recorded for the touched channel spaces
is rewritten in one go."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxcompress.compiler.ir import Analysis, PermuteFix
from onnxcompress.compiler.ops import ChannelLayout, rank_of
from onnxcompress.compiler.tensors import read_values


def _kept(layout: ChannelLayout | None, keep: dict[int, np.ndarray]) -> int:
    return 0 if layout is None else int(len(layout.indices(keep)))


def _set_const(node: gs.Node, index: int, values: np.ndarray) -> None:
    # a fresh constant: the exporter may share one constant between several nodes
    node.inputs[index] = gs.Constant(f"{node.name}_cut_{index}", np.ascontiguousarray(values))


def _fix_pad(node: gs.Node, axis: int, before: int, after: int) -> None:
    r = rank_of(node.inputs[0])
    if len(node.inputs) > 1 and node.inputs[1].name:
        pads = np.array(node.inputs[1].values, dtype=np.int64).reshape(-1)
        pads[axis], pads[axis + r] = before, after
        _set_const(node, 1, pads)
    else:
        pads = [int(p) for p in node.attrs["pads"]]
        pads[axis], pads[axis + r] = before, after
        node.attrs["pads"] = pads


def _fix_slice(node: gs.Node, axis: int, start: int, end: int) -> None:
    r = rank_of(node.inputs[0])
    if len(node.inputs) >= 3:
        n = np.asarray(node.inputs[1].values).size
        axes = list(np.asarray(node.inputs[3].values).reshape(-1)) if len(node.inputs) > 3 and node.inputs[3].name else list(range(n))
        i = [a + r if a < 0 else a for a in map(int, axes)].index(axis)
        for index, value in ((1, start), (2, end)):
            v = np.array(node.inputs[index].values).reshape(-1).copy()
            v[i] = value
            _set_const(node, index, v.astype(node.inputs[index].values.dtype))
    else:
        axes = [int(a) for a in node.attrs.get("axes", range(len(node.attrs["starts"])))]
        i = [a + r if a < 0 else a for a in axes].index(axis)
        for key, value in (("starts", start), ("ends", end)):
            v = [int(x) for x in node.attrs[key]]
            v[i] = value
            node.attrs[key] = v


def _fix_split(node: gs.Node, sizes: list[int]) -> None:
    values = np.asarray(sizes, dtype=np.int64)
    if len(node.inputs) > 1 and node.inputs[1].name:
        _set_const(node, 1, values)
    elif "split" in node.attrs:
        node.attrs["split"] = [int(v) for v in sizes]
    else:  # equal sizes implied (opset 18's num_outputs): after a cut they need not be
        node.attrs.pop("num_outputs", None)
        while len(node.inputs) < 2:
            node.inputs.append(gs.Variable.empty())
        node.inputs[1] = gs.Constant(f"{node.name}_cut_split", values)


def _permute(graph: gs.Graph, nodes: dict[str, gs.Node], fix: PermuteFix, keep: dict[int, np.ndarray]) -> None:
    """Replaces a channel shuffle's Reshape-Transpose-Reshape by a Gather of the kept positions
    on axis 1 (the ops left without readers go at the graph's cleanup)."""
    kept_in = fix.input.channel_mask(keep)
    kept_out = fix.output.channel_mask(keep)
    rank_in = np.cumsum(kept_in) - 1  # a kept input position's index among the kept ones
    indices = rank_in[np.asarray(fix.perm, dtype=np.int64)[kept_out]]
    first, last = nodes[fix.nodes[0]], nodes[fix.nodes[-1]]
    out = last.outputs[0]
    last.outputs.clear()
    graph.nodes.append(gs.Node("Gather", name=f"{first.name}_permute", attrs={"axis": 1},
                               inputs=[first.inputs[0], gs.Constant(f"{first.name}_permute_indices", indices.astype(np.int64))],
                               outputs=[out]))


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
        tensor.values = np.ascontiguousarray(np.take(read_values(tensor), idx, axis=s.axis))  # the full weight is not kept
    for fix in analysis.group_attr_fixes:
        if touched.intersection(fix.layout.spaces):
            nodes[fix.node].attrs[fix.attr] = int(len(fix.layout.indices(keep)))
    for fix in analysis.reshape_fixes:
        node = nodes[fix.node]
        target = np.array(node.inputs[1].values, dtype=np.int64).reshape(-1)
        target[: fix.keep_prefix] = 0  # copy those dims from the input
        if fix.flatten_rest:
            target[fix.keep_prefix :] = -1
        node.inputs[1].values = target
    for fix in analysis.pad_fixes:
        spaces = (fix.before.spaces if fix.before else ()) + (fix.after.spaces if fix.after else ())
        if touched.intersection(spaces):
            _fix_pad(nodes[fix.node], fix.axis, _kept(fix.before, keep), _kept(fix.after, keep))
    for fix in analysis.slice_fixes:
        spaces = (fix.before.spaces if fix.before else ()) + fix.inside.spaces
        if touched.intersection(spaces):
            start = _kept(fix.before, keep)
            _fix_slice(nodes[fix.node], fix.axis, start, start + _kept(fix.inside, keep))
    for fix in analysis.split_fixes:
        if touched.intersection(sp for o in fix.outputs for sp in o.spaces):
            _fix_split(nodes[fix.node], [_kept(o, keep) for o in fix.outputs])
    for fix in analysis.permute_fixes:
        if touched.intersection(fix.input.spaces + fix.output.spaces):
            _permute(graph, nodes, fix, keep)
    for fix in analysis.target_fixes:
        if touched.intersection(fix.layout.spaces):
            target = [_kept(e, keep) if isinstance(e, ChannelLayout) else int(e) for e in fix.entries]
            _set_const(nodes[fix.node], 1, np.asarray(target, dtype=np.int64))
    return graph
