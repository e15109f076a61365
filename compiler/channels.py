"""Channel analysis: which channels must shrink together, as a networkx coupling graph.

The op rules of compiler/ops/ run once per node in topological order and talk to a `Tracer`:

- a *space* is a set of channels created by one producer (the output channels of a Conv, Gemm or
  MatMul; the untracked inputs of a Concat; the zero channels a Pad adds); each space is a vertex
  of the coupling graph (`Tracer.coupling`, an undirected networkx Graph);
- `unify(a, b)` says two tensors carry the same channels (a residual Add, a depthwise Conv): it
  adds coupling edges between their spaces, channel i to channel i;
- when two layouts that must be unified cut their channels at different places (a residual Add
  of a 32-channel conv output with a tensor zero-padded from 16 to 32 channels: 8 + 16 + 8), the
  spaces involved are *split* at the union of the boundaries, with their whole coupled component
  (coupled spaces are channel-for-channel the same, so they split alike); every layout recorded
  before is re-expressed in the parts when the analysis ends (`resolve`);
- channel *groups* are the connected components of the coupling graph (`components`).

Slices (constants to cut), attribute fixes and frozen reasons are recorded per space while the
rules run; `finish()` resolves them to the final (split) spaces.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from onnxcompress.compiler.ops import ChannelLayout, DimRef, Segment


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
class PadFix:
    """A Pad that adds zero channels on `axis`: after a cut its pads there become the kept counts
    of the `before` and `after` zero-channel layouts (which may be empty)."""

    node: str
    axis: int
    before: ChannelLayout | None
    after: ChannelLayout | None


@dataclass(frozen=True)
class SliceFix:
    """A Slice that takes a channel range on `axis`: after a cut the range starts at the kept
    count of `before` (the channels ahead of it) and spans the kept channels of `inside`."""

    node: str
    axis: int
    before: ChannelLayout | None
    inside: ChannelLayout


@dataclass(frozen=True)
class SplitFix:
    """A Split on the channel axis: after a cut its sizes become the kept counts of `outputs`."""

    node: str
    axis: int
    outputs: tuple[ChannelLayout, ...]


@dataclass
class Space:
    size: int
    producer: str
    frozen: list[str] = field(default_factory=list)
    zero: bool = False  # channels that are constant zero (added by a Pad): free to drop
    offset: int = 0  # where these channels start among the producer's output channels (parts of a split space)


class Tracer:
    """Collects spaces, the coupling graph, cuts and frozen reasons while the op rules run."""

    def __init__(self) -> None:
        self.spaces: list[Space] = []
        self.coupling = nx.Graph()
        self.parts: dict[int, tuple[Segment, ...]] = {}  # a split space -> its parts, in order
        self.slices: list[ConstSlice] = []
        self.group_fixes: list[GroupAttrFix] = []
        self.reshape_fixes: list[ReshapeFix] = []
        self.pad_fixes: list[PadFix] = []
        self.slice_fixes: list[SliceFix] = []
        self.split_fixes: list[SplitFix] = []
        self.members: dict[int, list[str]] = defaultdict(list)
        self.notes: list[tuple[str, str]] = []  # (what, reason) of frozen ops
        # the shape domain: a tensor computed from Shape (x.size(0), a computed Reshape target)
        # -> its entries, each an int or a DimRef to a dimension of a tensor
        self.shape_values: dict[str, tuple[int | DimRef, ...]] = {}
        self.channel_of: dict[str, ChannelLayout] = {}  # tensor whose channel count a DimRef reads

    # -- spaces ----------------------------------------------------------------------------------
    def new_space(self, node: gs.Node, size: int, frozen: str | None = None, zero: bool = False, offset: int = 0) -> int:
        """A new channel space created by `node`; `offset`: where it starts in the node's output
        (a node that creates several spaces: Pad before/after, Concat's untracked inputs)."""
        sid = len(self.spaces)
        self.spaces.append(Space(size, node.name, [frozen] if frozen else [], zero, offset))
        self.coupling.add_node(sid)
        self.members[sid].append(node.name)
        return sid

    def resolve(self, layout: ChannelLayout | None) -> ChannelLayout | None:
        """`layout` in the current (split) spaces."""
        if layout is None or not any(s.space in self.parts for s in layout.segments):
            return layout
        segments: list[Segment] = []
        stack = list(reversed(layout.segments))
        while stack:
            seg = stack.pop()
            if seg.space in self.parts:
                stack.extend(reversed(self.parts[seg.space]))
            else:
                segments.append(seg)
        return replace(layout, segments=tuple(segments))

    def _split(self, space: int, at: int) -> None:
        """Splits `space` and every space coupled to it after channel `at` (0 < at < size)."""
        component = sorted(nx.node_connected_component(self.coupling, space))
        firsts, seconds = [], []
        for s in component:
            old = self.spaces[s]
            a, b = len(self.spaces), len(self.spaces) + 1
            for size, offset in ((at, old.offset), (old.size - at, old.offset + at)):
                self.spaces.append(Space(size, old.producer, list(old.frozen), old.zero, offset))
            self.members[a] = list(self.members[s])
            self.members[b] = list(self.members[s])
            self.parts[s] = (Segment(a, at), Segment(b, old.size - at))
            self.coupling.remove_node(s)
            self.coupling.add_nodes_from((a, b))
            firsts.append(a)
            seconds.append(b)
        for ids in (firsts, seconds):
            self.coupling.add_edges_from((ids[0], other) for other in ids[1:])

    def _cut_at(self, layout: ChannelLayout, boundaries: set[int]) -> ChannelLayout:
        """Splits the spaces of `layout` so that every offset in `boundaries` is a segment edge."""
        layout = self.resolve(layout)
        offset = 0
        for seg in layout.segments:
            inside = sorted(b for b in boundaries if offset < b < offset + seg.length)
            if inside:
                self._split(seg.space, inside[0] - offset)
                return self._cut_at(layout, boundaries)
            offset += seg.length
        return layout

    def refine(self, layout: ChannelLayout, boundaries: set[int]) -> ChannelLayout:
        """`layout` with its spaces split at `boundaries` (channel offsets along its axis)."""
        return self._cut_at(layout, boundaries)

    # -- recording -------------------------------------------------------------------------------
    def member(self, layout: ChannelLayout, node: gs.Node) -> None:
        for s in self.resolve(layout).spaces:
            if node.name not in self.members[s]:
                self.members[s].append(node.name)

    def slice(self, node: gs.Node, input_index: int, axis: int, layout: ChannelLayout, role: str) -> None:
        self.slices.append(ConstSlice(node.name, input_index, axis, layout, role))
        self.member(layout, node)

    def set_group_attr(self, node: gs.Node, layout: ChannelLayout) -> None:
        self.group_fixes.append(GroupAttrFix(node.name, layout))

    def fix_reshape(self, node: gs.Node, keep_prefix: int, flatten_rest: bool = False) -> None:
        self.reshape_fixes.append(ReshapeFix(node.name, keep_prefix, flatten_rest))

    def fix_pad(self, node: gs.Node, axis: int, before: ChannelLayout | None, after: ChannelLayout | None) -> None:
        self.pad_fixes.append(PadFix(node.name, axis, before, after))

    def fix_split(self, node: gs.Node, axis: int, outputs: tuple[ChannelLayout, ...]) -> None:
        self.split_fixes.append(SplitFix(node.name, axis, outputs))

    def fix_slice(self, node: gs.Node, axis: int, before: ChannelLayout | None, inside: ChannelLayout) -> None:
        self.slice_fixes.append(SliceFix(node.name, axis, before, inside))

    def channel_refs(self, tensor: str) -> list[DimRef]:
        return [e for e in self.shape_values.get(tensor, ()) if isinstance(e, DimRef) and e.channels]

    def freeze_channel_reads(self, tensor: str, reason: str) -> None:
        """The channel count read into shape tensor `tensor` is used where pruning would make it
        wrong: freeze the channels it was read from."""
        for ref in self.channel_refs(tensor):
            self.freeze(self.channel_of.get(ref.tensor), reason)

    def freeze(self, layout: ChannelLayout | None, reason: str) -> None:
        if layout is None:
            return
        for s in self.resolve(layout).spaces:
            if reason not in self.spaces[s].frozen:
                self.spaces[s].frozen.append(reason)

    def freeze_all(self, layouts, reason: str) -> None:
        for l in layouts:
            self.freeze(l, reason)

    def unify(self, a: ChannelLayout, b: ChannelLayout, node: gs.Node) -> bool:
        """Channels of `a` and `b` are the same channels (residual add, ...). Layouts whose
        segments end at different offsets are refined to common parts first."""
        a, b = self.resolve(a), self.resolve(b)
        if a.axis != b.axis or a.block != b.block or a.channels != b.channels:
            self.freeze(a, f"{node.op} '{node.name}' combines tensors with different channel layouts")
            self.freeze(b, f"{node.op} '{node.name}' combines tensors with different channel layouts")
            return False
        ends_a = set(np.cumsum([s.length for s in a.segments]).tolist())
        ends_b = set(np.cumsum([s.length for s in b.segments]).tolist())
        if ends_a != ends_b:
            a = self.refine(a, ends_b)
            b = self.refine(b, ends_a)
            a, b = self.resolve(a), self.resolve(b)
        for sa, sb in zip(a.segments, b.segments):
            self.coupling.add_edge(sa.space, sb.space)
        return True

    # -- results ---------------------------------------------------------------------------------
    def components(self) -> list[list[int]]:
        """The channel groups: connected components of the coupling graph (current spaces only),
        each sorted by space id."""
        return [sorted(c) for c in nx.connected_components(self.coupling)]

    def finish(self) -> None:
        """Re-expresses every recorded layout in the final spaces."""
        self.slices = [replace(s, layout=self.resolve(s.layout)) for s in self.slices]
        self.group_fixes = [replace(f, layout=self.resolve(f.layout)) for f in self.group_fixes]
        self.pad_fixes = [replace(f, before=self.resolve(f.before), after=self.resolve(f.after)) for f in self.pad_fixes]
        self.slice_fixes = [replace(f, before=self.resolve(f.before), inside=self.resolve(f.inside)) for f in self.slice_fixes]
        self.split_fixes = [replace(f, outputs=tuple(self.resolve(o) for o in f.outputs)) for f in self.split_fixes]


__all__ = ["ConstSlice", "DimRef", "GroupAttrFix", "PadFix", "ReshapeFix", "SliceFix", "Space", "SplitFix", "Tracer"]
