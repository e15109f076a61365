"""The networkx IR: what can be compressed in a graph, rebuilt from the ONNX graph after each pass.

`analyze(graph)` walks the nodes in topological order once, asking the per-op table
(compiler/ops.py) how channels flow through each op. The result is an `Analysis`:

- `dag`: a networkx DiGraph of nodes (op type, layer flag) with tensor-named edges;
- `layers`: Conv / Gemm / MatMul nodes with their cost and channel groups;
- `groups`: channel groups, every (node, axis) that must shrink together, with their frozen
  reason if they cannot;
- `removable`: residual branches and shape-preserving layers that can be dropped;
- `quantizable`: nodes whose weights the quantize pass can narrow;
- the internal records (`slices`, fixes) that tell the pruning pass exactly what to cut.

The graph stays the single source of truth; the analysis is cheap to rebuild (CNNs have at most
a few hundred nodes) and is never edited.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from onnxcompress.compiler import cost as costmod
from onnxcompress.compiler.ops import ChannelLayout, OP_TABLE, Segment, const


@dataclass(frozen=True)
class ConstSlice:
    """Cut constant input `input_index` of `node` along `axis` with `layout`'s kept indices.
    `role` says what the constant is: "out" (a producer's weight rows: its channels), "in" (a
    consumer's weight columns), "dw" (a depthwise weight), "bn_scale", "param" (bias & co)."""

    node: str
    input_index: int
    axis: int
    layout: ChannelLayout
    role: str


@dataclass(frozen=True)
class GroupAttrFix:
    """A depthwise Conv whose `group` attribute must equal its channel count after a cut."""

    node: str
    layout: ChannelLayout


@dataclass(frozen=True)
class ReshapeFix:
    """A Reshape whose constant target must copy its first `keep_prefix` dims (0) after a cut, and
    infer the flattened rest (-1) when `flatten_rest`."""

    node: str
    keep_prefix: int
    flatten_rest: bool


@dataclass(frozen=True)
class ChannelGroup:
    id: str
    channels: int
    members: tuple[str, ...]
    producers: tuple[str, ...]
    prunable: bool
    reason: str | None
    spaces: tuple[int, ...]

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
    dag: nx.DiGraph
    layers: tuple[Layer, ...]
    groups: tuple[ChannelGroup, ...]
    removable: tuple[RemovableUnit, ...]
    quantizable: tuple[str, ...]
    frozen: tuple[Frozen, ...]
    slices: tuple[ConstSlice, ...]
    group_attr_fixes: tuple[GroupAttrFix, ...]
    reshape_fixes: tuple[ReshapeFix, ...]
    space_group: dict[int, str] = field(default_factory=dict)
    tensor_layouts: dict[str, ChannelLayout | None] = field(default_factory=dict)

    def group(self, gid: str) -> ChannelGroup:
        for g in self.groups:
            if g.id == gid:
                return g
        raise KeyError(gid)

    def group_of_node(self, node: str) -> ChannelGroup | None:
        """The group of a producer node's output channels."""
        for g in self.groups:
            if node in g.producers:
                return g
        return None

    def unit(self, uid: str) -> RemovableUnit:
        for u in self.removable:
            if u.id == uid:
                return u
        raise KeyError(uid)

    @property
    def macs(self) -> int:
        return sum(l.macs for l in self.layers)


# ----------------------------------------------------------------------------------------------
# the tracer the op rules talk to
# ----------------------------------------------------------------------------------------------


@dataclass
class _Space:
    size: int
    producer: str
    frozen: list[str] = field(default_factory=list)


class Tracer:
    """Collects spaces, couplings (union-find), cuts and frozen reasons while rules run."""

    def __init__(self) -> None:
        self.spaces: list[_Space] = []
        self.parent: list[int] = []
        self.slices: list[ConstSlice] = []
        self.group_fixes: list[GroupAttrFix] = []
        self.reshape_fixes: list[ReshapeFix] = []
        self.members: dict[int, list[str]] = defaultdict(list)
        self.notes: list[Frozen] = []

    # union-find -------------------------------------------------------------------------------
    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    # API for rules ----------------------------------------------------------------------------
    def new_space(self, node: gs.Node, size: int, frozen: str | None = None) -> int:
        self.spaces.append(_Space(size, node.name, [frozen] if frozen else []))
        self.parent.append(len(self.spaces) - 1)
        sid = len(self.spaces) - 1
        self.members[sid].append(node.name)
        return sid

    def member(self, layout: ChannelLayout, node: gs.Node) -> None:
        for s in layout.spaces:
            if node.name not in self.members[s]:
                self.members[s].append(node.name)

    def slice(self, node: gs.Node, input_index: int, axis: int, layout: ChannelLayout, role: str) -> None:
        self.slices.append(ConstSlice(node.name, input_index, axis, layout, role))
        self.member(layout, node)

    def set_group_attr(self, node: gs.Node, layout: ChannelLayout) -> None:
        self.group_fixes.append(GroupAttrFix(node.name, layout))

    def fix_reshape(self, node: gs.Node, keep_prefix: int, flatten_rest: bool = False) -> None:
        self.reshape_fixes.append(ReshapeFix(node.name, keep_prefix, flatten_rest))

    def freeze(self, layout: ChannelLayout | None, reason: str) -> None:
        if layout is None:
            return
        for s in layout.spaces:
            if reason not in self.spaces[s].frozen:
                self.spaces[s].frozen.append(reason)

    def freeze_all(self, layouts, reason: str) -> None:
        for l in layouts:
            self.freeze(l, reason)

    def unify(self, a: ChannelLayout, b: ChannelLayout, node: gs.Node) -> bool:
        """Channels of `a` and `b` are the same channels (residual add, ...)."""
        if a.axis != b.axis or a.block != b.block or [s.length for s in a.segments] != [s.length for s in b.segments]:
            self.freeze(a, f"{node.op} '{node.name}' combines tensors with different channel layouts")
            self.freeze(b, f"{node.op} '{node.name}' combines tensors with different channel layouts")
            return False
        for sa, sb in zip(a.segments, b.segments):
            self._union(sa.space, sb.space)
        return True


# ----------------------------------------------------------------------------------------------
# analysis
# ----------------------------------------------------------------------------------------------


def _dag(graph: gs.Graph) -> nx.DiGraph:
    dag = nx.DiGraph()
    for node in graph.nodes:
        dag.add_node(node.name, op=node.op, layer=bool(OP_TABLE.get(node.op) and OP_TABLE[node.op].layer))
    for node in graph.nodes:
        for t in node.outputs:
            for consumer in t.outputs:
                dag.add_edge(node.name, consumer.name, tensor=t.name)
    return dag


def trace(graph: gs.Graph) -> tuple[Tracer, dict[str, ChannelLayout | None]]:
    tracer = Tracer()
    layouts: dict[str, ChannelLayout | None] = {}
    for node in graph.nodes:
        ins = [layouts.get(t.name) if not isinstance(t, gs.Constant) else None for t in node.inputs]
        info = OP_TABLE.get(node.op)
        if info is None or (node.domain or "") not in ("", "ai.onnx"):
            tracer.freeze_all(ins, f"unknown op {node.domain + '.' if node.domain else ''}{node.op} '{node.name}'")
            tracer.notes.append(Frozen(node.name, f"unknown op {node.op}: channels through it are frozen"))
            outs: list[ChannelLayout | None] = [None] * len(node.outputs)
        else:
            outs = info.rule(node, ins, tracer)
        for t, l in zip(node.outputs, outs):
            layouts[t.name] = l
    for t in graph.outputs:
        tracer.freeze(layouts.get(t.name), f"reaches graph output '{t.name}'")
    return tracer, layouts


def _groups(tracer: Tracer, order: dict[str, int]) -> tuple[list[ChannelGroup], dict[int, str]]:
    classes: dict[int, list[int]] = defaultdict(list)
    for s in range(len(tracer.spaces)):
        classes[tracer.find(s)].append(s)
    ordered = sorted(classes.values(), key=lambda ss: min(order.get(tracer.spaces[s].producer, 0) for s in ss))
    groups, space_group = [], {}
    for i, spaces in enumerate(ordered):
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
        reason = "; ".join(reasons) if reasons else (None if size > 1 else "a single channel")
        groups.append(ChannelGroup(gid, size, tuple(members), producers, reason is None, reason, tuple(sorted(spaces))))
    return groups, space_group


def _layers(graph: gs.Graph, layouts: dict, space_group: dict[int, str]) -> list[Layer]:
    layers = []
    for node in graph.nodes:
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

    graph.toposort()
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    tracer, layouts = trace(graph)
    groups, space_group = _groups(tracer, order)
    layers = _layers(graph, layouts, space_group)
    frozen = list(tracer.notes)
    for g in groups:
        if not g.prunable and g.reason:
            frozen.append(Frozen(g.id, g.reason))
    quantizable = tuple(
        n.name
        for n in graph.nodes
        if OP_TABLE.get(n.op) and OP_TABLE[n.op].quantizable and len(n.inputs) > 1 and isinstance(n.inputs[1], gs.Constant)
    )
    removable = find_removable(graph, {l.name: l for l in layers})
    return Analysis(
        dag=_dag(graph),
        layers=tuple(layers),
        groups=tuple(groups),
        removable=tuple(removable),
        quantizable=quantizable,
        frozen=tuple(frozen),
        slices=tuple(tracer.slices),
        group_attr_fixes=tuple(tracer.group_fixes),
        reshape_fixes=tuple(tracer.reshape_fixes),
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
