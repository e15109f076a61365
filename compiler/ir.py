"""The IR: what can be compressed in a graph, rebuilt from the ONNX graph after each pass.

`analyze(graph)` builds the networkx graph of the model (compiler/graph.py: ops and tensors as
typed vertices), runs the per-op channel rules of compiler/ops/ over it in topological order
(compiler/channels.py: spaces and their coupling graph), and returns an `Analysis`:

- `graph`: the networkx NodeGraph, every tensor vertex annotated with its channel `layout`;
- `layers`: Conv / Gemm / MatMul nodes with their cost and channel groups;
- `groups`: channel groups, the connected components of the channel-coupling graph: every
  (node, axis) that must shrink together, with the reason when they cannot;
- `removable`: residual branches (single-entry single-exit regions found by dominator analysis,
  compiler/removable.py) and shape-preserving layers that can be dropped;
- `quantizable`: nodes whose weights the quantize pass can narrow;
- the records (`slices`, fixes) that tell the pruning pass exactly what to cut.

Groups, units and layers are indexed by id. The analysis is pure: it never changes the gs.Graph
it reads (the one mutable source of truth), and it is cheap to rebuild (CNNs have at most a few
hundred nodes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxcompress.compiler import cost as costmod
from onnxcompress.compiler.channels import ConstSlice, GroupAttrFix, PadFix, PermuteFix, ReshapeFix, SliceFix, SplitFix, TargetFix, Tracer
from onnxcompress.compiler.graph import NodeGraph, tensor_vertex
from onnxcompress.compiler.ops import OP_TABLE, ChannelLayout, Segment, const, shape_value_rule


@dataclass(frozen=True)
class ChannelGroup:
    id: str
    channels: int
    members: tuple[str, ...]
    producers: tuple[str, ...]
    prunable: bool
    reason: str | None
    spaces: tuple[int, ...]
    # (producer, part) pairs that identify the group across rewrites: part k is the k-th channel
    # range of that producer's output that belongs to a group of its own (a split space, e.g. a
    # conv whose output adds to a zero-padded shortcut), 0 when the output is one group
    anchors: tuple[tuple[str, int], ...] = ()
    # the fewest channels a cut may keep: 0 when no tensor is made of this group's channels alone
    # (every tensor that carries them carries other channels too, so cutting all of them leaves
    # no tensor empty: the zero channels an option-A shortcut pads with, and the conv channels
    # added to them), else 1
    min_keep: int = 1
    # interior boundaries of the channel ranges that tensors hold part of (a Split of a shuffled
    # stream holds half of a branch conv's channels): a cut keeps, of every range [a, b) between
    # them, kept_before(b) - kept_before(a) channels, kept_before(x) = floor(keep * x / channels
    # + 1/2), so each tensor keeps its share and the cost model is exact (compiler/cost.py)
    cells: tuple[int, ...] = ()

    @property
    def anchor(self) -> tuple[str, int]:
        return self.anchors[0]

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "channels": self.channels,
            "members": list(self.members),
            "prunable": self.prunable,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Layer:
    name: str
    op: str
    macs: int
    params: int
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    out_group: str | None
    in_groups: tuple[str, ...]
    depthwise: bool

    def to_json(self) -> dict:
        return {"name": self.name, "op": self.op, "macs": self.macs, "params": self.params, "out_channels": self.out_channels}


@dataclass(frozen=True)
class RemovableUnit:
    """Something that can be dropped while the model stays valid.
    kind "residual_block": `nodes` is a residual branch; removing it makes the Add's output its
    shortcut. kind "layer": `nodes` is a shape-preserving layer (plus its BN/activation) in a
    chain; removing it connects its input to its consumers."""

    id: str
    kind: str
    nodes: tuple[str, ...]
    anchor: str  # the residual Add, or the layer node
    keep_input: str  # tensor that replaces `replaced_output`
    replaced_output: str
    macs: int

    def to_json(self) -> dict:
        return {"id": self.id, "nodes": list(self.nodes), "kind": self.kind}


@dataclass(frozen=True)
class Frozen:
    what: str
    reason: str


@dataclass(frozen=True)
class Analysis:
    graph: NodeGraph
    layers: tuple[Layer, ...]
    groups: tuple[ChannelGroup, ...]
    removable: tuple[RemovableUnit, ...]
    quantizable: tuple[str, ...]
    frozen: tuple[Frozen, ...]
    slices: tuple[ConstSlice, ...]
    group_attr_fixes: tuple[GroupAttrFix, ...]
    reshape_fixes: tuple[ReshapeFix, ...]
    pad_fixes: tuple[PadFix, ...] = ()
    slice_fixes: tuple[SliceFix, ...] = ()
    split_fixes: tuple[SplitFix, ...] = ()
    target_fixes: tuple[TargetFix, ...] = ()
    permute_fixes: tuple[PermuteFix, ...] = ()
    space_group: dict[int, str] = field(default_factory=dict)
    tensor_layouts: dict[str, ChannelLayout | None] = field(default_factory=dict)
    _groups_by_id: dict[str, ChannelGroup] = field(default_factory=dict, repr=False)
    _group_by_producer: dict[str, ChannelGroup] = field(default_factory=dict, repr=False)
    _units_by_id: dict[str, RemovableUnit] = field(default_factory=dict, repr=False)
    _units_by_anchor: dict[str, RemovableUnit] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._groups_by_id.update((g.id, g) for g in self.groups)
        for g in self.groups:
            for p, k in g.anchors:
                if k == 0:
                    self._group_by_producer.setdefault(p, g)
        self._units_by_id.update((u.id, u) for u in self.removable)
        for u in self.removable:
            self._units_by_anchor.setdefault(u.anchor, u)

    def group(self, gid: str) -> ChannelGroup:
        return self._groups_by_id[gid]

    def group_of_node(self, node: str) -> ChannelGroup | None:
        """The group of a producer node's output channels (of its first part, when its output
        spans several groups)."""
        return self._group_by_producer.get(node)

    def unit(self, uid: str) -> RemovableUnit:
        return self._units_by_id[uid]

    def unit_of_anchor(self, anchor: str) -> RemovableUnit | None:
        return self._units_by_anchor.get(anchor)

    @property
    def macs(self) -> int:
        return sum(l.macs for l in self.layers)


# ----------------------------------------------------------------------------------------------
# analysis
# ----------------------------------------------------------------------------------------------


def trace(ng: NodeGraph) -> tuple[Tracer, dict[str, ChannelLayout | None]]:
    """Runs the op rules over the ops in topological order; returns the tracer and the channel
    layout of every tensor (in the final, split spaces)."""
    tracer = Tracer()
    layouts: dict[str, ChannelLayout | None] = {}
    for node in ng.nodes():
        ins = [tracer.resolve(layouts.get(t.name)) if not isinstance(t, gs.Constant) else None for t in node.inputs]
        if shape_value_rule(node, tracer):
            for t in node.outputs:
                layouts[t.name] = None
            continue
        for k, t in enumerate(node.inputs):  # a channel count read by Shape, used outside the shape domain
            if t.name in tracer.shape_values and not ((node.op, k) in (("Reshape", 1), ("Expand", 1), ("Resize", 3))):
                tracer.freeze_channel_reads(t.name, f"the channel count of a tensor is used by {node.op} '{node.name}'")
        info = OP_TABLE.get(node.op)
        if info is None or (node.domain or "") not in ("", "ai.onnx"):
            tracer.freeze_all(ins, f"unknown op {node.domain + '.' if node.domain else ''}{node.op} '{node.name}'")
            tracer.notes.append((node.name, f"unknown op {node.op}: channels through it are frozen"))
            outs: list[ChannelLayout | None] = [None] * len(node.outputs)
        else:
            outs = info.rule(node, ins, tracer)
        for t, l in zip(node.outputs, outs):
            layouts[t.name] = l
    for t in ng.graph.outputs:
        tracer.freeze(layouts.get(t.name), f"reaches graph output '{t.name}'")
    tracer.finish()
    layouts = {name: tracer.resolve(l) for name, l in layouts.items()}
    for name, l in layouts.items():
        v = tensor_vertex(name)
        if v in ng.nx:
            ng.nx.nodes[v]["layout"] = l
    return tracer, layouts


def _whole(tracer: Tracer, layouts: dict[str, ChannelLayout | None]) -> set[int]:
    """Spaces of the components that make up some tensor's channel axis alone (the components
    that a cut must leave at least one channel)."""
    component = {s: i for i, ss in enumerate(tracer.components()) for s in ss}
    whole: set[int] = set()
    for layout in layouts.values():
        if layout is not None and layout.segments:
            owners = {component.get(seg.space) for seg in layout.segments}
            if len(owners) == 1 and None not in owners:
                whole.add(owners.pop())
    return {s for s, i in component.items() if i in whole}


def _boundaries(tracer: Tracer, layouts: dict[str, ChannelLayout | None]) -> dict[int, set[int]]:
    """Space -> interior boundaries of the channel ranges of it that some tensor holds without
    the rest (from partial segments, merged per tensor: a shuffle's interleave holds all)."""
    out: dict[int, set[int]] = {}
    for layout in layouts.values():
        if layout is None or all(tracer.whole(seg) for seg in layout.segments):
            continue
        ranges: dict[int, list[tuple[int, int]]] = {}
        for seg in layout.segments:
            ranges.setdefault(seg.space, []).append((seg.start, seg.start + seg.length))
        for space, rs in ranges.items():
            merged: list[list[int]] = []
            for lo, hi in sorted(rs):
                if merged and lo <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], hi)
                else:
                    merged.append([lo, hi])
            size = tracer.spaces[space].size
            cuts = {x for lo, hi in merged for x in (lo, hi) if 0 < x < size}
            if cuts:
                out.setdefault(space, set()).update(cuts)
    return out


def _groups(tracer: Tracer, order: dict[str, int], layouts: dict[str, ChannelLayout | None]) -> tuple[list[ChannelGroup], dict[int, str]]:
    """One group per connected component of the coupling graph, numbered in the order of their
    first producer (ties: the older space first). A group of one channel is prunable (to zero)
    only when no tensor consists of it alone."""
    whole = _whole(tracer, layouts)
    bounds = _boundaries(tracer, layouts)
    components = sorted(tracer.components(), key=lambda ss: (min(order.get(tracer.spaces[s].producer, 0) for s in ss), ss[0]))
    offsets: dict[str, list[int]] = {}
    for ss in components:
        for s in ss:
            offsets.setdefault(tracer.spaces[s].producer, []).append(tracer.spaces[s].offset)
    part = {p: {o: k for k, o in enumerate(sorted(set(os)))} for p, os in offsets.items()}
    groups, space_group = [], {}
    for i, spaces in enumerate(components):
        gid = f"g{i}"
        reasons: list[str] = []
        members: list[str] = []
        for s in spaces:
            space_group[s] = gid
            reasons += [r for r in tracer.spaces[s].frozen if r not in reasons]
            members += [m for m in tracer.members[s] if m not in members]
        members.sort(key=lambda n: order.get(n, 0))
        producers = tuple(sorted({tracer.spaces[s].producer for s in spaces}, key=lambda n: order.get(n, 0)))
        size = tracer.spaces[spaces[0]].size
        min_keep = 1 if spaces[0] in whole else 0
        reason = "; ".join(reasons) if reasons else (None if size > 1 or min_keep == 0 else "a single channel")
        anchors = tuple(sorted({(sp.producer, part[sp.producer][sp.offset]) for sp in (tracer.spaces[s] for s in spaces)},
                               key=lambda a: (order.get(a[0], 0), a[1])))
        cells = tuple(sorted(set().union(*(bounds.get(s, set()) for s in spaces))))
        groups.append(ChannelGroup(gid, size, tuple(members), producers, reason is None, reason, tuple(spaces), anchors, min_keep, cells))
    return groups, space_group


def _layers(ng: NodeGraph, layouts: dict, space_group: dict[int, str]) -> list[Layer]:
    layers = []
    for node in ng.nodes():
        info = OP_TABLE.get(node.op)
        if info is None or not info.layer or len(node.inputs) < 2 or const(node.inputs[1]) is None:
            continue
        w = const(node.inputs[1])
        out_l = layouts.get(node.outputs[0].name)
        in_l = layouts.get(node.inputs[0].name)
        kernel = tuple(int(k) for k in w.shape[2:]) if node.op == "Conv" else ()
        stride = tuple(int(s) for s in node.attrs.get("strides", [1] * len(kernel))) if node.op == "Conv" else ()
        out_group = space_group.get(out_l.segments[0].space) if out_l is not None and len(out_l.segments) == 1 else None
        in_groups = tuple(dict.fromkeys(space_group[s] for s in in_l.spaces)) if in_l is not None else ()
        in_ch, out_ch = costmod.layer_channels(node)
        layers.append(
            Layer(
                name=node.name,
                op=node.op,
                macs=costmod.node_macs(node),
                params=costmod.node_params(node),
                in_channels=in_ch,
                out_channels=out_ch,
                kernel=kernel,
                stride=stride,
                out_group=out_group,
                in_groups=in_groups,
                depthwise=node.op == "Conv" and int(node.attrs.get("group", 1)) > 1 and w.shape[1] == 1,
            )
        )
    return layers


def analyze(graph: gs.Graph) -> Analysis:
    """Builds the IR for a (canonical) graph with shapes. Never modifies the graph."""
    from onnxcompress.compiler.removable import find_removable  # after Layer/RemovableUnit exist

    ng = NodeGraph(graph)
    tracer, layouts = trace(ng)
    groups, space_group = _groups(tracer, ng.position, layouts)
    layers = _layers(ng, layouts, space_group)
    frozen = [Frozen(what, reason) for what, reason in tracer.notes]
    for g in groups:
        if not g.prunable and g.reason:
            frozen.append(Frozen(g.id, g.reason))
    quantizable = tuple(
        n.name
        for n in ng.nodes()
        if OP_TABLE.get(n.op) and OP_TABLE[n.op].quantizable and len(n.inputs) > 1 and isinstance(n.inputs[1], gs.Constant)
    )
    removable = find_removable(ng, {l.name: l for l in layers})
    return Analysis(
        graph=ng,
        layers=tuple(layers),
        groups=tuple(groups),
        removable=tuple(removable),
        quantizable=quantizable,
        frozen=tuple(frozen),
        slices=tuple(tracer.slices),
        group_attr_fixes=tuple(tracer.group_fixes),
        reshape_fixes=tuple(tracer.reshape_fixes),
        pad_fixes=tuple(tracer.pad_fixes),
        slice_fixes=tuple(tracer.slice_fixes),
        split_fixes=tuple(tracer.split_fixes),
        target_fixes=tuple(tracer.target_fixes),
        permute_fixes=tuple(tracer.permute_fixes),
        space_group=space_group,
        tensor_layouts=layouts,
    )


def keep_by_space(analysis: Analysis, keep: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    """Expands kept channel indices per group id into kept indices per space."""
    out: dict[int, np.ndarray] = {}
    for g in analysis.groups:
        if g.id in keep:
            for s in g.spaces:
                out[s] = np.asarray(sorted(keep[g.id]), dtype=np.int64)
    return out


__all__ = [
    "Analysis",
    "GroupAttrFix",
    "PadFix",
    "PermuteFix",
    "ReshapeFix",
    "SliceFix",
    "SplitFix",
    "TargetFix",
    "ChannelGroup",
    "ChannelLayout",
    "ConstSlice",
    "Frozen",
    "Layer",
    "RemovableUnit",
    "Segment",
    "analyze",
    "keep_by_space",
]
