"""prune_channels: remove output channels of channel groups and everything that reads them.

Plan forms (DESIGN.md):
  {"pass": "prune_channels", "ratio": 0.5}                 every prunable group, uniformly
  {"pass": "prune_channels", "group": "g3", "keep": 24}    one group, by count
  {"pass": "prune_channels", "group": "g3", "indices": [..]}  one group, explicit channels
  {"pass": "prune_channels", "groups": {"g0": 12, "g3": 24}}  several groups by count (what the
                                                             search emits: one step, one refit)
Options: "criterion" (l1 | l2 | bn | activation | apoz, default l1) chooses which channels go;
"round_to" (default 1) rounds kept counts to a multiple, for hardware-friendly widths;
"reconstruct" (default: when calibration data is given) re-fits the layers that read pruned
channels by least squares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnxcompress.compiler.cost import SearchCost, kept_before
from onnxcompress.compiler.ir import Analysis, ChannelGroup, analyze, keep_by_space
from onnxcompress.compiler.onnx_io import export_graph
from onnxcompress.compiler.runtime import intermediate_outputs
from onnxcompress.compiler.errors import PlanError
from onnxcompress.passes import importance
from onnxcompress.passes.cut import apply_cut
from onnxcompress.passes.manager import resolve
from onnxcompress.passes.plan import parse_fields
from onnxcompress.passes.reconstruct import reconstruct
from onnxcompress.passes.registry import PassContext, register


@dataclass(frozen=True)
class PruneChannelsParams:
    ratio: float | None = None
    group: str | None = None
    keep: int | None = None
    indices: tuple[int, ...] | None = None
    groups: tuple[tuple[str, int], ...] | None = None
    criterion: str = "l1"
    reconstruct: bool | None = None
    round_to: int = 1

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "PruneChannelsParams":
        f = parse_fields(
            obj,
            "prune_channels",
            {"ratio": (int, float), "group": str, "keep": int, "indices": list, "groups": dict, "criterion": str, "reconstruct": bool, "round_to": int},
        )
        forms = [k for k in ("ratio", "group", "groups") if k in f]
        if len(forms) != 1:
            raise PlanError('prune_channels needs exactly one of "ratio", "group" (with "keep" or "indices") or "groups"')
        if "ratio" in f and not 0.0 <= float(f["ratio"]) < 1.0:
            raise PlanError(f"prune_channels ratio must be in [0, 1), got {f['ratio']}")
        if "group" in f and ("keep" in f) == ("indices" in f):
            raise PlanError('prune_channels with "group" needs exactly one of "keep" or "indices"')
        if ("keep" in f or "indices" in f) and "group" not in f:
            raise PlanError('prune_channels "keep"/"indices" need a "group"')
        if "keep" in f and f["keep"] < 0:  # 0 only for groups that allow it (ChannelGroup.min_keep: checked in `targets`)
            raise PlanError(f"prune_channels keep must be >= 0, got {f['keep']}")
        indices = None
        if "indices" in f:
            if not f["indices"] or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in f["indices"]):
                raise PlanError("prune_channels indices must be a non-empty list of channel numbers")
            if len(set(f["indices"])) != len(f["indices"]):
                raise PlanError("prune_channels indices must not repeat")
            indices = tuple(sorted(f["indices"]))
        groups = None
        if "groups" in f:
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in f["groups"].values()):
                raise PlanError("prune_channels groups must map group ids to channel counts >= 0")
            groups = tuple(sorted((str(k), int(v)) for k, v in f["groups"].items()))
        if f.get("round_to", 1) < 1:
            raise PlanError(f"prune_channels round_to must be >= 1, got {f['round_to']}")
        criterion = f.get("criterion", "l1")
        if criterion not in importance.CRITERIA:
            raise PlanError(f"unknown importance criterion '{criterion}'; choose one of {', '.join(importance.CRITERIA)}")
        return cls(
            ratio=float(f["ratio"]) if "ratio" in f else None,
            group=f.get("group"),
            keep=f.get("keep"),
            indices=indices,
            groups=groups,
            criterion=criterion,
            reconstruct=f.get("reconstruct"),
            round_to=f.get("round_to", 1),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.ratio is not None:
            out["ratio"] = self.ratio
        if self.group is not None:
            out["group"] = self.group
        if self.keep is not None:
            out["keep"] = self.keep
        if self.indices is not None:
            out["indices"] = list(self.indices)
        if self.groups is not None:
            out["groups"] = dict(self.groups)
        if self.criterion != "l1":
            out["criterion"] = self.criterion
        if self.reconstruct is not None:
            out["reconstruct"] = self.reconstruct
        if self.round_to != 1:
            out["round_to"] = self.round_to
        return out


def _prunable(group: ChannelGroup, ident: str) -> ChannelGroup:
    if not group.prunable:
        raise PlanError(f"group '{ident}' cannot be pruned: {group.reason}")
    return group


def targets(analysis: Analysis, params: PruneChannelsParams, ctx: PassContext) -> dict[str, int | tuple[int, ...]]:
    """group id (in this graph) -> channels to keep (a count, or explicit indices)."""
    if params.ratio is not None:
        return {g.id: rounded_keep(g.channels, g.channels * (1.0 - params.ratio), params.round_to) for g in analysis.groups if g.prunable}
    wanted: list[tuple[str, int | tuple[int, ...]]] = []
    if params.group is not None:
        wanted.append((params.group, params.indices if params.indices is not None else int(params.keep)))
    else:
        wanted.extend(params.groups or ())
    out: dict[str, int | tuple[int, ...]] = {}
    for ident, k in wanted:
        g = _prunable(resolve(ctx, analysis, ident, "group"), ident)
        if isinstance(k, tuple):
            if max(k) >= g.channels:
                raise PlanError(f"group '{ident}' has {g.channels} channels; index {max(k)} is out of range")
        elif k > g.channels:
            raise PlanError(f"group '{ident}' has {g.channels} channels; cannot keep {k}")
        elif k < g.min_keep:
            raise PlanError(f"group '{ident}' must keep at least {g.min_keep} channel: a tensor consists of its channels alone")
        # an explicit 0 removes the group (allowed above); counts otherwise round to the grid
        out[g.id] = k if isinstance(k, tuple) or k == 0 else rounded_keep(g.channels, k, params.round_to)
    return out


def rounded_keep(channels: int, keep: float, multiple: int) -> int:
    """A kept-channel count rounded to a multiple of `multiple` (hardware-friendly widths: on
    x86 onnxruntime's blocked NCHWc convolutions run 8/16 channels at a time, and a width off
    that grid can be *slower* than the unpruned layer), clamped to [min(multiple, channels),
    channels]."""
    if multiple <= 1:
        return int(min(channels, max(1, round(keep))))
    k = int(round(keep / multiple)) * multiple
    return int(min(channels, max(min(multiple, channels), k)))


MAX_UNIFORM_RATIO = 0.95  # the largest ratio `uniform_ratio` proposes (5 % of every group kept)


def uniform_ratio(analysis: Analysis, macs: float | None = None, params: float | None = None, iterations: int = 30,
                  decimals: int = 4) -> float:
    """The smallest `ratio` of `{"pass": "prune_channels", "ratio": ratio}` (every prunable group
    cut alike) whose predicted MACs and layer parameters are within the fractions `macs` and
    `params` of the model's (None: unconstrained): bisection on the exact cost model with this
    pass's own rounding of kept counts. The result is rounded *up* to `decimals`: kept counts only
    shrink as the ratio grows, while rounding to nearest can step back over some group's rounding
    boundary and miss the target. MAX_UNIFORM_RATIO when no ratio meets them."""
    cost = SearchCost(analysis)
    groups = [g for g in analysis.groups if g.prunable]
    goal_macs = (macs or 1.0) * cost.total_macs
    goal_params = (params or 1.0) * cost.total_layer_params
    lo, hi = 0.0, MAX_UNIFORM_RATIO
    for _ in range(iterations):
        mid = (lo + hi) / 2
        keep = {g.id: rounded_keep(g.channels, g.channels * (1 - mid), 1) for g in groups}
        if cost.macs(keep) <= goal_macs and cost.layer_params(keep) <= goal_params:
            hi = mid
        else:
            lo = mid
    scale = 10**decimals
    return min(MAX_UNIFORM_RATIO, math.ceil(hi * scale) / scale)


def choose_channels(
    graph: gs.Graph, analysis: Analysis, want: dict[str, int | tuple[int, ...]], criterion: str, calibration: np.ndarray | None
) -> dict[str, np.ndarray]:
    groups = [analysis.group(gid) for gid, k in want.items() if not isinstance(k, tuple) and k < analysis.group(gid).channels]
    activations: dict[str, np.ndarray] = {}
    if criterion in importance.DATA_CRITERIA:
        if calibration is None:
            raise PlanError(f"importance criterion '{criterion}' needs calibration data (pass --data)")
        names = importance.tensors_to_observe(graph, analysis, groups)
        activations = intermediate_outputs(export_graph(graph.copy()), calibration, names)
    score = importance.scorer(criterion)
    keep: dict[str, np.ndarray] = {}
    for gid, k in want.items():
        g = analysis.group(gid)
        if isinstance(k, tuple):
            keep[gid] = np.asarray(k, dtype=np.int64)
        elif k < g.channels:
            s = score(graph, analysis, g, activations)
            keep[gid] = np.sort(np.concatenate([_best(s, a, b, kept_before(k, b, g.channels) - kept_before(k, a, g.channels))
                                                for a, b in zip((0,) + g.cells, g.cells + (g.channels,))]))
    return keep


def _best(scores: np.ndarray, a: int, b: int, n: int) -> np.ndarray:
    """The `n` best-scoring channels among a..b-1 (stable: ties keep the lower index, so results
    are reproducible)."""
    part = scores[a:b]
    return a + np.lexsort((np.arange(b - a), -part))[:n]


def _empty_tensor(analysis: Analysis, by_space: dict[int, np.ndarray]) -> str | None:
    """A tensor that the cut would leave without channels (a shuffled stream's half whose every
    group keeps only channels of the other half), if any."""
    for name, layout in analysis.tensor_layouts.items():
        if layout is not None and layout.channels and _touched(layout, by_space) and not layout.channel_mask(by_space).any():
            return name
    return None


def _touched(layout, by_space: dict[int, np.ndarray]) -> bool:  # noqa: ANN001 - a ChannelLayout
    return any(s in by_space for s in layout.spaces)


@register("prune_channels", PruneChannelsParams)
def prune_channels(graph: gs.Graph, params: PruneChannelsParams, ctx: PassContext) -> gs.Graph:
    analysis = analyze(graph)
    want = targets(analysis, params, ctx)
    keep = choose_channels(graph, analysis, want, params.criterion, ctx.calibration)
    if not keep:
        return graph
    do_fit = params.reconstruct if params.reconstruct is not None else ctx.calibration is not None
    if do_fit and ctx.calibration is None:
        raise PlanError("prune_channels with reconstruct=true needs calibration data (pass --data)")
    teacher = export_graph(graph.copy()) if do_fit else None
    by_space = keep_by_space(analysis, keep)
    empty = _empty_tensor(analysis, by_space)
    if empty is not None:
        raise PlanError(f"prune_channels would leave tensor '{empty}' without channels: keep more channels of its groups")
    graph = apply_cut(graph, analysis, by_space)
    if do_fit:
        graph = reconstruct(graph, teacher, analysis, by_space, ctx.calibration, ctx.seed)
    return graph
