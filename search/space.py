"""The search space of one teacher: which decisions a plan can make, what they cost, and how a set
of decisions becomes a plan.

Three kinds of decisions, each a list in topological order:
- "remove": keep or drop a removable unit (N2N stage 1);
- "prune": how many channels each prunable channel group keeps (AMC, N2N stage 2);
- "quantize": the bit width of each quantizable layer (HAQ).

Costs are predicted exactly without rewriting: `SearchCost` of the teacher (or, after removals, of
the teacher with those units removed: a `Structure`) gives MACs and layer parameters; size is
parameters times bytes per element at each layer's bits; latency comes from a `LatencyModel`
fitted on measurements when a latency target is asked for.

Plan ids always refer to the teacher's analysis (that is what `apply_plan` resolves). Pruning after
removals is decided on the groups of the model with those units removed (a removal can merge two
groups, e.g. a branch conv whose output now feeds the residual Add directly); each such group is
written in the plan under a teacher id whose anchor it contains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np
import onnx

from onnxcompress.compiler.cost import BYTES_PER_ELEMENT, SearchCost, model_params
from onnxcompress.compiler.ir import Analysis, Layer, analyze
from onnxcompress.compiler.onnx_io import import_graph
from onnxcompress.compiler.errors import PlanError
from onnxcompress.search.latency import LatencyModel
from onnxcompress.search.metrics import Cost

KINDS = ("remove", "prune", "quantize")


@dataclass(frozen=True)
class Decision:
    """One decision point with the features an agent observes.

    `ident` is the id written in the plan (teacher group id, unit id, or node name); `local` the id
    in the structure being decided (differs from `ident` only for groups after removals).
    `macs`/`params` are those of every layer the decision scales; `coupled` counts the layers whose
    output it shrinks (a residual group couples several)."""

    kind: str
    ident: str
    local: str
    op: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    macs: int
    params: int
    coupled: int
    depthwise: bool = False
    layers: tuple[str, ...] = ()


def _layer_decision(kind: str, ident: str, layer: Layer, macs: int, params: int, coupled: int, layers: tuple[str, ...]) -> Decision:
    return Decision(
        kind=kind,
        ident=ident,
        local=ident,
        op=layer.op,
        in_channels=layer.in_channels,
        out_channels=layer.out_channels,
        kernel=max(layer.kernel) if layer.kernel else 1,
        stride=max(layer.stride) if layer.stride else 1,
        macs=macs,
        params=params,
        coupled=coupled,
        depthwise=layer.depthwise,
        layers=layers,
    )


@dataclass(frozen=True)
class Structure:
    """The teacher with a set of removable units removed: its analysis, exact cost model, and its
    prunable groups as "prune" decisions (with the teacher ids the plan uses)."""

    removed: frozenset[str]
    analysis: Analysis | None  # None when the removals could not be applied
    cost: SearchCost | None
    groups: tuple[Decision, ...]
    other_params: int  # parameters outside Conv/Gemm/MatMul layers (unfolded BN, ...), unpruned
    structure_bytes: int = 0  # bytes of the ONNX file that are not parameters (names, attributes)
    error: str | None = None

    def channels(self, local: str) -> int:
        assert self.analysis is not None
        return self.analysis.group(local).channels


def _group_decisions(analysis: Analysis, teacher_anchor: Mapping[str, tuple[str, int]], teacher_order: Mapping[str, int]) -> tuple[Decision, ...]:
    """Prunable groups in topological order (of their first producer), with their teacher ids."""
    index = {l.name: i for i, l in enumerate(analysis.layers)}
    by_name = {l.name: l for l in analysis.layers}
    out = []
    for g in analysis.groups:
        if not g.prunable:
            continue
        ids = sorted((tid for tid, anchor in teacher_anchor.items() if anchor in g.anchors), key=lambda t: teacher_order[t])
        if not ids:
            continue
        producers = sorted((p for p in g.producers if p in by_name), key=lambda n: index[n])
        if not producers:
            continue
        touching = [l for l in analysis.layers if l.out_group == g.id or g.id in l.in_groups]
        rep = by_name[producers[0]]
        d = _layer_decision(
            "prune",
            ids[0],
            rep,
            macs=sum(l.macs for l in touching),
            params=sum(l.params for l in touching),
            coupled=len(producers),
            layers=tuple(l.name for l in touching),
        )
        out.append((index[producers[0]], replace(d, local=g.id, out_channels=g.channels)))
    out.sort(key=lambda t: t[0])
    return tuple(d for _, d in out)


def _structure_bytes(model: onnx.ModelProto, params: int) -> int:
    """Bytes of `model`'s file that are not float32 parameters: names, shapes, attributes. Pruning
    changes them by a few bytes (shorter dimensions); a removal drops its nodes' share."""
    return max(0, model.ByteSize() - 4 * params)


class SearchSpace:
    """Decisions and exact cost predictions for one canonical teacher. Structures after removals
    are built on first use and memoised (a pure function of the removal set)."""

    def __init__(self, teacher: onnx.ModelProto, latency: LatencyModel | None = None, precision: Any = None) -> None:
        """`latency`: MACs -> latency model for pruning searches. `precision`: a
        passes.quantize.precision.PrecisionCost built with a sample, for quantization searches: its
        measured per-layer table (HAQ's hardware feedback) then predicts latency instead."""
        self.teacher = teacher
        self.latency = latency
        self.precision = precision
        self.analysis = analyze(import_graph(teacher))
        self.search_cost = SearchCost(self.analysis)
        a = self.analysis
        self._layers = {l.name: l for l in a.layers}
        self._teacher_anchor = {g.id: g.anchor for g in a.groups}
        self._teacher_order = {g.id: i for i, g in enumerate(a.groups)}
        self.total_params = model_params(teacher)
        self.other_params = self.total_params - self.search_cost.total_layer_params
        # sizes are bytes of the ONNX file, as the evaluator measures them and the report and
        # the pipeline check a size target: parameters at 4 bytes plus the graph's structure
        # (names, attributes), which pruning leaves nearly as it is
        self.structure_bytes = _structure_bytes(teacher, self.total_params)
        base = Structure(frozenset(), a, self.search_cost, _group_decisions(a, self._teacher_anchor, self._teacher_order), self.other_params,
                         self.structure_bytes)
        self._structures: dict[frozenset[str], Structure] = {frozenset(): base}
        self.groups: tuple[Decision, ...] = base.groups
        self.units: tuple[Decision, ...] = tuple(self._unit_decision(u.id) for u in a.removable if self._unit_layers(u.id))
        self.quantizable: tuple[Decision, ...] = tuple(
            _layer_decision("quantize", n, self._layers[n], self._layers[n].macs, self._layers[n].params, 1, (n,))
            for n in a.quantizable
            if n in self._layers
        )
        self.teacher_cost = self.cost()

    # -- decisions ---------------------------------------------------------------------------

    def _unit_layers(self, uid: str) -> tuple[str, ...]:
        return tuple(n for n in self.analysis.unit(uid).nodes if n in self._layers)

    def _unit_decision(self, uid: str) -> Decision:
        unit = self.analysis.unit(uid)
        names = self._unit_layers(uid)
        first = self._layers[names[0]]
        return Decision(
            kind="remove",
            ident=uid,
            local=uid,
            op=unit.kind,
            in_channels=first.in_channels,
            out_channels=self._layers[names[-1]].out_channels,
            kernel=max(first.kernel) if first.kernel else 1,
            stride=max(first.stride) if first.stride else 1,
            macs=sum(self._layers[n].macs for n in names),
            params=sum(self._layers[n].params for n in names),
            coupled=len(names),
            layers=names,
        )

    def unit_nodes(self, uid: str) -> frozenset[str]:
        return frozenset(self.analysis.unit(uid).nodes)

    def removed_layers(self, removed: frozenset[str]) -> frozenset[str]:
        return frozenset(n for uid in removed for n in self._unit_layers(uid))

    def structure(self, removed: frozenset[str]) -> Structure:
        """The teacher with the units in `removed` removed (memoised)."""
        removed = frozenset(removed)
        got = self._structures.get(removed)
        if got is not None:
            return got
        from onnxcompress.passes import Plan, apply_plan  # the passes import the search's peers

        order = {u.id: i for i, u in enumerate(self.analysis.removable)}
        steps = [{"pass": "remove", "block": uid} for uid in sorted(removed, key=lambda u: order[u])]
        try:
            model = apply_plan(self.teacher, Plan.from_json({"passes": steps}))
            analysis = analyze(import_graph(model))
        except Exception as exc:  # an unappliable removal set: the episode's plan will be infeasible
            s = Structure(removed, None, None, (), self.other_params, self.structure_bytes, error=f"{type(exc).__name__}: {exc}")
        else:
            cost = SearchCost(analysis)
            params = model_params(model)
            other = params - cost.total_layer_params
            s = Structure(removed, analysis, cost, _group_decisions(analysis, self._teacher_anchor, self._teacher_order), other,
                          _structure_bytes(model, params))
        self._structures[removed] = s
        return s

    # -- cost --------------------------------------------------------------------------------

    def cost(
        self,
        removed: frozenset[str] = frozenset(),
        keep: Mapping[str, int] | None = None,
        bits: Mapping[str, int] | None = None,
        structure: Structure | None = None,
    ) -> Cost:
        """Predicted cost. `keep` maps *local* group ids of `structure` (default: the structure of
        `removed`; without removals local ids are the teacher's) to kept channel counts; `bits`
        maps layer names to bit widths (quantization only happens without pruning here, so the
        layer's teacher parameter count is used)."""
        keep = keep or {}
        s = structure if structure is not None else (self.structure(removed) if removed else self._structures[frozenset()])
        if s.cost is None:
            # unappliable removals: report the teacher-based estimate; the evaluator rejects the plan
            gone = self.removed_layers(s.removed)
            macs = self.search_cost.macs({}, removed_layers=gone)
            params = self.search_cost.layer_params({}, removed_layers=gone) + self.other_params
        else:
            macs = s.cost.macs(keep)
            params = s.cost.layer_params(keep) + s.other_params
        if self.precision is not None:
            # quantization searches (no pruning): the measured table predicts the file the
            # quantize pass writes, scales, zero points, int32 biases and Q/DQ nodes included
            size = float(self.precision.size_bytes({n: int(b) for n, b in (bits or {}).items()}))
        else:
            size = float(params) * BYTES_PER_ELEMENT[32] + s.structure_bytes
            for name, b in (bits or {}).items():
                layer = self._layers[name]
                size -= layer.params * (BYTES_PER_ELEMENT[32] - BYTES_PER_ELEMENT[int(b)])
        if self.precision is not None:
            latency = float(self.precision.latency_ms(dict(bits or {}), batch=1))
        else:
            latency = self.latency.predict(macs) if self.latency is not None else None
        return Cost(macs=int(macs), params=int(params), size_bytes=int(round(size)), latency_ms=latency)

    # -- plans -------------------------------------------------------------------------------

    def plan_json(
        self,
        removed: frozenset[str] = frozenset(),
        keep: Mapping[str, int] | None = None,
        bits: Mapping[str, int] | None = None,
        criterion: str = "l1",
        reconstruct: bool = True,
    ) -> dict[str, Any]:
        """The plan for a set of decisions. `keep` maps *teacher* group ids to counts; a group that
        keeps every channel is left out, and 32-bit layers stay float."""
        order = {u.id: i for i, u in enumerate(self.analysis.removable)}
        steps: list[dict[str, Any]] = [{"pass": "remove", "block": uid} for uid in sorted(removed, key=lambda u: order[u])]
        s = self.structure(frozenset(removed))
        if keep:
            full = {d.ident: (s.channels(d.local) if s.analysis is not None else None) for d in s.groups}
            cut = {gid: int(k) for gid, k in sorted(keep.items(), key=lambda kv: self._teacher_order[kv[0]]) if full.get(gid) is None or int(k) < full[gid]}
            if cut:
                steps.append({"pass": "prune_channels", "groups": cut, "criterion": criterion, "reconstruct": reconstruct})
        if bits:
            narrow = {n: int(b) for n, b in bits.items() if int(b) < 32}
            if narrow:
                steps.append({"pass": "quantize", "nodes": narrow})
        return {"passes": steps}

    def decode(self, plan: Mapping[str, Any]) -> tuple[frozenset[str], dict[str, int], dict[str, int]]:
        """(removed units, kept counts per *local* group of the removed structure, bits per layer)
        of a plan in the forms the search emits (remove / prune_channels groups|ratio / quantize
        nodes|bits). Raises PlanError for anything else."""
        steps = plan.get("passes") if isinstance(plan, Mapping) else None
        if not isinstance(steps, list):
            raise PlanError('a plan must be {"passes": [...]}')
        removed: set[str] = set()
        keep: dict[str, int] = {}
        bits: dict[str, int] = {}
        pruned = False
        for step in steps:
            name = step.get("pass") if isinstance(step, Mapping) else None
            if name == "remove" and not pruned and not bits:
                if step.get("block") not in {u.id for u in self.analysis.removable}:
                    raise PlanError(f"unknown removable block {step.get('block')!r}")
                removed.add(step["block"])
            elif name == "prune_channels" and not pruned and not bits:
                s = self.structure(frozenset(removed))
                local_of = {d.ident: d.local for d in s.groups}
                if "groups" in step:
                    for gid, k in step["groups"].items():
                        if gid not in local_of:
                            raise PlanError(f"group {gid!r} is not prunable here")
                        keep[local_of[gid]] = int(k)
                elif "ratio" in step and s.analysis is not None:
                    for d in s.groups:
                        c = s.channels(d.local)
                        keep[d.local] = max(1, int(round(c * (1.0 - float(step["ratio"])))))
                else:
                    raise PlanError("predict_cost understands prune_channels with \"groups\" or \"ratio\"")
                pruned = True
            elif name == "quantize" and not bits and not pruned:
                if "nodes" in step:
                    bits.update({str(n): int(b) for n, b in step["nodes"].items()})
                elif "bits" in step and "node" in step:
                    bits[str(step["node"])] = int(step["bits"])
                elif "bits" in step:
                    bits.update({d.ident: int(step["bits"]) for d in self.quantizable})
                else:
                    raise PlanError("quantize needs \"nodes\" or \"bits\"")
                for n, b in bits.items():
                    if n not in self._layers or b not in BYTES_PER_ELEMENT:
                        raise PlanError(f"cannot quantize {n!r} to {b} bits")
            else:
                raise PlanError(f"predict_cost does not understand step {step!r} here")
        return frozenset(removed), keep, bits

    def predict(self, plan: Mapping[str, Any]) -> Cost:
        removed, keep, bits = self.decode(plan)
        return self.cost(removed, keep, bits)


def keep_bounds(channels: int, min_keep: float) -> tuple[int, int]:
    """(fewest, most) channels a group may keep under the search's lower bound on keep ratio."""
    return max(1, int(math.ceil(min_keep * channels - 1e-9))), channels


def bits_from_action(action: float, choices: tuple[int, ...]) -> int:
    """HAQ's mapping of a continuous action in [0, 1] to a discrete bit width."""
    i = int(np.floor(float(np.clip(action, 0.0, 1.0)) * len(choices)))
    return choices[min(i, len(choices) - 1)]
