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
- a layout segment may repeat each of its channels r times in a row along the axis
  (`Segment.repeat`: a channel shuffle's g interleaved copies of one channel, a GroupNorm group
  of channels cut as one). When `unify` meets a segment repeated r times against one repeated
  r/f times, the finer spaces are *coarsened* (`_coarsen`): every f consecutive channels become
  one channel of the analysis, in the whole coupled component, the way `_split` does for
  boundaries. That is the many-to-one coupling of ShuffleNetV2: channel j of one unit's stream
  is channels 2j and 2j+1 of the next unit's branch conv. A boundary inside the copies of one
  channel isolates that channel in a space of its own;
- channel *groups* are the connected components of the coupling graph (`components`).

Slices (constants to cut), attribute fixes and frozen reasons are recorded per space while the
rules run; `finish()` resolves them to the final (split) spaces.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Sequence

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
    """A depthwise Conv whose `group` attribute must equal its channel count after a cut (or
    another such attribute: a GroupNormalization's `num_groups`)."""

    node: str
    layout: ChannelLayout
    attr: str = "group"


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


@dataclass(frozen=True)
class TargetFix:
    """A Reshape whose target becomes `entries` after a cut that touches `layout`: an int stays
    as it is (0 copies the input's dimension, -1 infers it), a layout becomes its kept count
    (a channel shuffle's or a GroupNorm's regrouping reshapes)."""

    node: str
    entries: tuple
    layout: ChannelLayout


@dataclass(frozen=True)
class PermuteFix:
    """A channel shuffle (Reshape-Transpose-Reshape, `nodes`) that a cut replaces by a Gather on
    axis 1: output position p is input position `perm[p]`; after a cut the Gather picks, for each
    kept position of `output`, its place among the kept positions of `input`. (A pruned shuffle
    is in general no interleave of equal chunks any more, so the reshapes cannot stay.)"""

    nodes: tuple[str, ...]
    input: ChannelLayout
    output: ChannelLayout
    perm: tuple[int, ...]


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
        self.target_fixes: list[TargetFix] = []
        self.permute_fixes: list[PermuteFix] = []
        # spaces that partial segments cover (a shuffle's interleave), and the parts they split into
        self.partial: set[int] = set()
        # the output of the last op of a multi-op pattern (channel shuffle, GroupNorm) -> the
        # layout it carries, recorded by the pattern's first op (the ops between carry None)
        self.deferred: dict[str, ChannelLayout] = {}
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

    def whole(self, seg: Segment) -> bool:
        """The segment covers its whole space."""
        return seg.start == 0 and seg.length == self.spaces[seg.space].size

    def resolve(self, layout: ChannelLayout | None) -> ChannelLayout | None:
        """`layout` in the current (split) spaces."""
        if layout is None or not any(s.space in self.parts for s in layout.segments):
            return layout
        segments: list[Segment] = []
        stack = list(reversed(layout.segments))
        while stack:
            seg = stack.pop()
            if seg.space not in self.parts:
                segments.append(seg)
            elif self.whole(seg):
                stack.extend(reversed([Segment(p.space, p.length, p.repeat * seg.repeat) for p in self.parts[seg.space]]))
            else:  # the parts overlapping channels [start, start + length) (split parts: repeat 1)
                lo, hi, at, pieces = seg.start, seg.start + seg.length, 0, []
                for p in self.parts[seg.space]:
                    a, b = max(lo, at), min(hi, at + p.length)
                    if a < b:
                        pieces.append(Segment(p.space, b - a, seg.repeat, a - at))
                    at += p.length
                stack.extend(reversed(pieces))
        return replace(layout, segments=tuple(segments))

    def permute(self, layout: ChannelLayout, perm: Sequence[int]) -> ChannelLayout:
        """The layout of a tensor whose position p is position `perm[p]` of `layout` (a channel
        shuffle): runs of one space's channels become partial segments."""
        layout = self.resolve(layout)
        positions = layout.positions()
        out = ChannelLayout.from_positions(layout.axis, [positions[i] for i in perm])
        self.partial.update(s.space for s in out.segments if not self.whole(s))
        return out

    def _rebuild(self, space: int, pieces) -> None:  # noqa: ANN001 - Space -> ((size, offset, repeat), ...)
        """Replaces `space` and every space coupled to it by new spaces, `pieces(old)` giving each
        one's parts in order; the k-th parts of all of them are coupled (coupled spaces are
        channel-for-channel the same, so they divide alike)."""
        component = sorted(nx.node_connected_component(self.coupling, space))
        rows = []
        for s in component:
            old = self.spaces[s]
            ids = []
            for size, offset, _ in pieces(old):
                ids.append(len(self.spaces))
                self.spaces.append(Space(size, old.producer, list(old.frozen), old.zero, offset))
                self.members[ids[-1]] = list(self.members[s])
                if s in self.partial:
                    self.partial.add(ids[-1])
            self.parts[s] = tuple(Segment(n, size, repeat) for n, (size, _, repeat) in zip(ids, pieces(old)))
            self.coupling.remove_node(s)
            self.coupling.add_nodes_from(ids)
            rows.append(ids)
        for column in zip(*rows):
            self.coupling.add_edges_from((column[0], other) for other in column[1:])

    def _split(self, space: int, at: int) -> None:
        """Splits `space` and every space coupled to it after channel `at` (0 < at < size)."""
        self._rebuild(space, lambda old: ((at, old.offset, 1), (old.size - at, old.offset + at, 1)))

    def _cut_at(self, layout: ChannelLayout, boundaries: set[int]) -> ChannelLayout:
        """Splits the spaces of `layout` so that every offset in `boundaries` is a segment edge.
        An offset inside the copies of one repeated channel (a shuffle's stream split in halves
        of an odd channel count) isolates that channel in a space of its own, and its segment is
        cut into two segments of the same channel with fewer copies each."""
        layout = self.resolve(layout)
        offset = 0
        for i, seg in enumerate(layout.segments):
            inside = sorted(b for b in boundaries if offset < b < offset + seg.width)
            if inside:
                unit, rem = divmod(inside[0] - offset, seg.repeat)
                if unit > 0:  # (rem == 0 implies unit > 0: the boundary is inside the segment)
                    self._split(seg.space, seg.start + unit)
                elif seg.length > 1:
                    self._split(seg.space, seg.start + 1)
                else:  # one channel: its copies are cut apart in the layout
                    parts = (Segment(seg.space, 1, rem, seg.start), Segment(seg.space, 1, seg.repeat - rem, seg.start))
                    layout = replace(layout, segments=layout.segments[:i] + parts + layout.segments[i + 1 :])
                return self._cut_at(layout, boundaries)
            offset += seg.width
        return layout

    def refine(self, layout: ChannelLayout, boundaries: set[int]) -> ChannelLayout:
        """`layout` with its spaces split at `boundaries` (positions along its axis)."""
        return self._cut_at(layout, boundaries)

    def _coarsen(self, space: int, factor: int) -> bool:
        """Makes every `factor` consecutive channels of `space` one channel of the analysis (they
        are always kept or cut together), in its whole coupled component: each space becomes a
        space of size / factor channels, repeated `factor` times. False if a size does not divide."""
        component = nx.node_connected_component(self.coupling, space)
        if any(self.spaces[s].size % factor for s in component) or self.partial.intersection(component):
            return False  # (partial segments of a shuffle's interleave do not line up with the blocks)
        self._rebuild(space, lambda old: ((old.size // factor, old.offset, factor),))
        return True

    def coarsen(self, layout: ChannelLayout, factor: int) -> ChannelLayout | None:
        """`layout` with every block of `factor` consecutive positions made of whole copies of
        one channel (a GroupNorm group: kept or cut as a whole), or None when its channels do not
        line up with the blocks."""
        layout = self.resolve(layout)
        while True:
            offset, again = 0, False
            for seg in layout.segments:
                if offset % factor or (seg.width % factor):
                    return None
                if seg.repeat % factor:
                    if factor % seg.repeat or not self._coarsen(seg.space, factor // seg.repeat):
                        return None
                    again = True
                    break
                offset += seg.width
            if not again:
                return layout
            layout = self.resolve(layout)

    # -- recording -------------------------------------------------------------------------------
    def member(self, layout: ChannelLayout, node: gs.Node) -> None:
        for s in self.resolve(layout).spaces:
            if node.name not in self.members[s]:
                self.members[s].append(node.name)

    def slice(self, node: gs.Node, input_index: int, axis: int, layout: ChannelLayout, role: str) -> None:
        self.slices.append(ConstSlice(node.name, input_index, axis, layout, role))
        self.member(layout, node)

    def set_group_attr(self, node: gs.Node, layout: ChannelLayout, attr: str = "group") -> None:
        self.group_fixes.append(GroupAttrFix(node.name, layout, attr))

    def fix_reshape(self, node: gs.Node, keep_prefix: int, flatten_rest: bool = False) -> None:
        self.reshape_fixes.append(ReshapeFix(node.name, keep_prefix, flatten_rest))

    def fix_pad(self, node: gs.Node, axis: int, before: ChannelLayout | None, after: ChannelLayout | None) -> None:
        self.pad_fixes.append(PadFix(node.name, axis, before, after))

    def fix_split(self, node: gs.Node, axis: int, outputs: tuple[ChannelLayout, ...]) -> None:
        self.split_fixes.append(SplitFix(node.name, axis, outputs))

    def fix_target(self, node: gs.Node, entries: tuple, layout: ChannelLayout) -> None:
        self.target_fixes.append(TargetFix(node.name, entries, layout))

    def fix_permute(self, nodes: Sequence[gs.Node], input: ChannelLayout, output: ChannelLayout, perm: Sequence[int]) -> None:
        self.permute_fixes.append(PermuteFix(tuple(n.name for n in nodes), input, output, tuple(int(p) for p in perm)))

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
        ends_a = set(np.cumsum([s.width for s in a.segments]).tolist())
        ends_b = set(np.cumsum([s.width for s in b.segments]).tolist())
        if ends_a != ends_b:
            a = self.refine(a, ends_b)
            b = self.refine(b, ends_a)
            a, b = self.resolve(a), self.resolve(b)
            if [s.width for s in a.segments] != [s.width for s in b.segments]:  # a refined layout cut a repeated channel
                return self.unify(a, b, node)
        for sa, sb in zip(a.segments, b.segments):
            for seg in (sa, sb):
                if not self.whole(seg):
                    # coupling is space to space, channel i to channel i: a partial segment's
                    # space is split so that the segment covers whole spaces first
                    if seg.start > 0:
                        self._split(seg.space, seg.start)
                    else:
                        self._split(seg.space, seg.length)
                    return self.unify(a, b, node)
        for sa, sb in zip(a.segments, b.segments):
            if sa.repeat != sb.repeat:
                # a channel repeated r times against r channels (a shuffle's interleaved copies
                # against a conv's outputs): those channels become one channel of the analysis
                fine, coarse = (sa, sb) if sa.repeat < sb.repeat else (sb, sa)
                if coarse.repeat % fine.repeat or not self._coarsen(fine.space, coarse.repeat // fine.repeat):
                    reason = f"{node.op} '{node.name}' maps channels {coarse.repeat} to {fine.repeat}, which do not line up"
                    self.freeze(a, reason)
                    self.freeze(b, reason)
                    return False
                return self.unify(a, b, node)
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
        self.permute_fixes = [replace(f, input=self.resolve(f.input), output=self.resolve(f.output)) for f in self.permute_fixes]
        self.target_fixes = [
            replace(f, layout=self.resolve(f.layout), entries=tuple(self.resolve(e) if isinstance(e, ChannelLayout) else e for e in f.entries))
            for f in self.target_fixes
        ]


__all__ = ["ConstSlice", "DimRef", "GroupAttrFix", "PadFix", "PermuteFix", "ReshapeFix", "SliceFix", "Space", "SplitFix", "TargetFix", "Tracer"]
