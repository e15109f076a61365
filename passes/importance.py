"""Channel importance criteria behind one interface (scoring is separate from cutting).

Each criterion returns, for a channel group, one score per channel (higher = keep). Scores of a
coupled group add up over all its members, as in Torch-Pruning's group importance.

- "l1", "l2": norms of the producers' filters (rows) plus the consumers' input columns, each
  member's norms divided by their mean so that no single layer dominates the group;
- "bn": |gamma| of the group's BatchNormalization nodes (groups without BN fall back to "l1");
- "activation": mean |activation| of the channel on calibration data times the norm of the weights
  that read it (its contribution to the next layers);
- "apoz": 1 - the average percentage of zeros of the (post-ReLU) channel on calibration data.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from onnxcompress.compiler.ir import Analysis, ChannelGroup, ConstSlice
from onnxcompress.compiler.errors import PlanError
from onnxcompress.compiler.tensors import read_values

CRITERIA = ("l1", "l2", "bn", "activation", "apoz")
DATA_CRITERIA = ("activation", "apoz")


NORM_BLOCK_ELEMENTS = 1 << 20  # float64 temporaries of 8 MB (for a whole VGG fc weight: 0.8 GB, three of them)


def _per_index_norm(values: np.ndarray, axis: int, order: int) -> np.ndarray:
    """L1 or L2 norm of each index along `axis`, a block of indices at a time (each row's sum is
    the one the whole array would give)."""
    n = values.shape[axis]
    step = max(1, NORM_BLOCK_ELEMENTS // max(1, values.size // max(n, 1)))
    out = np.empty(n)
    for i in range(0, n, step):
        part = values[(slice(None),) * axis + (slice(i, i + step),)]
        wide = part.astype(np.float64)
        moved = np.moveaxis(np.abs(wide, out=wide), axis, 0).reshape(part.shape[axis], -1)
        out[i : i + step] = moved.sum(1) if order == 1 else np.sqrt((moved**2).sum(1))
    return out


def _channel_scores(s: ConstSlice, per_index: np.ndarray, space: int, channels: int) -> np.ndarray:
    """Per-channel scores of `space` (`channels` channels) from per-index scores along a slice's
    axis; channels the slice does not hold (it reads part of the space: a shuffled stream's half)
    score NaN."""
    layout = s.layout
    if layout.block is not None:
        block = per_index.reshape(layout.block)
        per_index = np.moveaxis(block, layout.block_axis, 0).reshape(layout.block[layout.block_axis], -1).sum(1)
    out, offset = np.full(channels, np.nan), 0
    for seg in layout.segments:
        if seg.space == space:  # the copies of a repeated channel (a GroupNorm group's) add up
            part = per_index[offset : offset + seg.width].reshape(seg.length, seg.repeat).sum(1)
            at = slice(seg.start, seg.start + seg.length)
            out[at] = np.where(np.isnan(out[at]), part, out[at] + part)
        offset += seg.width
    return out


def _normalised(scores: np.ndarray) -> np.ndarray:
    """Scores divided by their mean over the channels held (no single layer dominates a group),
    0 where not held."""
    held = ~np.isnan(scores)
    return np.where(held, scores / (scores[held].mean() + 1e-12), 0.0) if held.any() else np.zeros_like(scores)


def _slices_of(analysis: Analysis, group: ChannelGroup, roles: tuple[str, ...]) -> list[tuple[ConstSlice, int]]:
    spaces = set(group.spaces)
    out = []
    for s in analysis.slices:
        if s.role in roles:
            for sp in dict.fromkeys(s.layout.spaces):  # a space may sit in several segments (a shuffle's interleave)
                if sp in spaces:
                    out.append((s, sp))
    return out


def weight_scores(graph: gs.Graph, analysis: Analysis, group: ChannelGroup, order: int, roles=("out", "in", "dw")) -> np.ndarray:
    nodes = {n.name: n for n in graph.nodes}
    total = np.zeros(group.channels)
    for s, space in _slices_of(analysis, group, roles):
        values = read_values(nodes[s.node].inputs[s.input_index])
        total += _normalised(_channel_scores(s, _per_index_norm(values, s.axis, order), space, group.channels))
    return total


def bn_scores(graph: gs.Graph, analysis: Analysis, group: ChannelGroup) -> np.ndarray:
    pairs = _slices_of(analysis, group, ("bn_scale",))
    if not pairs:
        return weight_scores(graph, analysis, group, 1)
    nodes = {n.name: n for n in graph.nodes}
    total = np.zeros(group.channels)
    for s, space in pairs:
        total += np.nan_to_num(np.abs(_channel_scores(s, read_values(nodes[s.node].inputs[s.input_index]).astype(np.float64), space, group.channels)))
    return total


def activation_scores(
    graph: gs.Graph, analysis: Analysis, group: ChannelGroup, activations: dict[str, np.ndarray], kind: str
) -> np.ndarray:
    """`activations` maps tensor name -> calibration activations of the tensors that consumers
    read (see `tensors_to_observe`)."""
    nodes = {n.name: n for n in graph.nodes}
    total = np.zeros(group.channels)
    found = False
    for s, space in _slices_of(analysis, group, ("in",)):
        tensor = nodes[s.node].inputs[0].name
        if tensor not in activations:
            continue
        act = activations[tensor]
        axis = s.layout.axis
        moved = np.moveaxis(act, axis, 1).reshape(act.shape[0], act.shape[axis], -1)
        width = s.layout.width()
        if moved.shape[1] != width and moved.shape[1] % width == 0:
            # a grouped conv reads channel j of each of its groups as one weight column: the
            # activation of channel j is the mean over the groups' copies
            moved = moved.reshape(moved.shape[0], moved.shape[1] // width, width, -1).mean(axis=1)
        if kind == "apoz":
            per_index = (moved > 0).mean(axis=(0, 2))
        else:
            w = read_values(nodes[s.node].inputs[s.input_index])
            per_index = np.abs(moved).mean(axis=(0, 2)) * _per_index_norm(w, s.axis, 2)
        total += _normalised(_channel_scores(s, per_index, space, group.channels))
        found = True
    return total if found else weight_scores(graph, analysis, group, 1)


def tensors_to_observe(graph: gs.Graph, analysis: Analysis, groups: list[ChannelGroup]) -> list[str]:
    nodes = {n.name: n for n in graph.nodes}
    names = []
    for g in groups:
        for s, _ in _slices_of(analysis, g, ("in",)):
            t = nodes[s.node].inputs[0].name
            if t not in names:
                names.append(t)
    return names


def scorer(criterion: str) -> Callable:
    if criterion not in CRITERIA:
        raise PlanError(f"unknown importance criterion '{criterion}'; choose one of {', '.join(CRITERIA)}")
    return {
        "l1": lambda g, a, grp, acts: weight_scores(g, a, grp, 1),
        "l2": lambda g, a, grp, acts: weight_scores(g, a, grp, 2),
        "bn": lambda g, a, grp, acts: bn_scores(g, a, grp),
        "activation": lambda g, a, grp, acts: activation_scores(g, a, grp, acts, "activation"),
        "apoz": lambda g, a, grp, acts: activation_scores(g, a, grp, acts, "apoz"),
    }[criterion]
