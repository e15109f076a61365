"""Channel layouts: which channels (spaces, in order) a tensor's channel axis carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import onnx_graphsurgeon as gs

if TYPE_CHECKING:  # pragma: no cover
    from onnxcompress.compiler.channels import Tracer


@dataclass(frozen=True)
class DimRef:
    """The run-time size of dimension `axis` of tensor `tensor` (read by a Shape op);
    `channels` when that dimension is a tracked channel axis (its size changes under pruning)."""

    tensor: str
    axis: int
    channels: bool


@dataclass(frozen=True)
class Segment:
    """`length` consecutive channels of one space, from its channel `start` on, each repeated
    `repeat` times in a row along the axis (`width` = length * repeat positions): position
    i * repeat + r is channel start + i. A repeat > 1 comes from a GroupNorm (a channel is a whole
    group of channels) or the cut copies of one channel. A segment covers its whole space (start
    0, length = the space's size) except after a channel shuffle, whose output interleaves
    channels of several spaces one at a time (regroup_rules.py): those segments are *partial*."""

    space: int
    length: int
    repeat: int = 1
    start: int = 0

    @property
    def width(self) -> int:
        return self.length * self.repeat


@dataclass(frozen=True)
class ChannelLayout:
    """Which channels a tensor's `axis` carries.

    When `block` is set, `axis` is a flattened axis holding a whole (C, H, W)-like block in
    row-major order, and the channels sit at `block_axis` of that block (Flatten/Reshape into a
    fully connected layer, in NCHW or NHWC order alike).
    """

    axis: int
    segments: tuple[Segment, ...]
    block: tuple[int, ...] | None = None
    block_axis: int = 0

    @property
    def channels(self) -> int:
        """Positions along the channel axis (segments' widths, repeats included)."""
        return sum(s.width for s in self.segments)

    @property
    def spaces(self) -> tuple[int, ...]:
        return tuple(s.space for s in self.segments)

    def with_axis(self, axis: int) -> "ChannelLayout":
        return ChannelLayout(axis, self.segments, self.block, self.block_axis)

    def channel_mask(self, keep: dict[int, np.ndarray]) -> np.ndarray:
        """Boolean mask over this layout's channels; `keep` maps space -> kept channel indices
        (spaces absent from `keep` keep everything)."""
        parts = []
        for seg in self.segments:
            m = np.zeros(seg.length, dtype=bool)
            if seg.space in keep:
                k = np.asarray(keep[seg.space], dtype=np.int64)
                m[k[(k >= seg.start) & (k < seg.start + seg.length)] - seg.start] = True
            else:
                m[:] = True
            parts.append(np.repeat(m, seg.repeat) if seg.repeat != 1 else m)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def indices(self, keep: dict[int, np.ndarray]) -> np.ndarray:
        """Indices along `axis` to keep. For a plain single-space layout the order of `keep` is
        kept (the class-subset pass reorders outputs); otherwise indices come out sorted."""
        first = self.segments[0] if len(self.segments) == 1 else None
        if self.block is None and first is not None and first.space in keep and first.repeat == 1 and first.start == 0 \
                and np.all(np.asarray(keep[first.space], dtype=np.int64) < first.length):
            return np.asarray(keep[first.space], dtype=np.int64)
        mask = self.channel_mask(keep)
        if self.block is None:
            return np.flatnonzero(mask)
        shape = list(self.block)
        full = np.arange(int(np.prod(shape))).reshape(shape)
        return np.sort(np.take(full, np.flatnonzero(mask), axis=self.block_axis).reshape(-1))

    def scaled(self, factor: int) -> "ChannelLayout":
        """The layout of a tensor with one entry per `factor` positions of this one (a GroupNorm's
        per-group parameters): every repeat divided by `factor` (callers check divisibility)."""
        return ChannelLayout(self.axis, tuple(Segment(s.space, s.length, s.repeat // factor, s.start) for s in self.segments))

    def width(self) -> int:
        """Size of `axis` in the tensor."""
        return self.channels if self.block is None else int(np.prod(self.block))

    def positions(self) -> list[tuple[int, int]]:
        """(space, channel) at each position along the axis (not for flattened blocks)."""
        return [(s.space, s.start + i) for s in self.segments for i in range(s.length) for _ in range(s.repeat)]

    @staticmethod
    def from_positions(axis: int, positions: Sequence[tuple[int, int]]) -> "ChannelLayout":
        """The layout whose positions carry `positions` ((space, channel) each): runs of
        consecutive channels of one space become one segment, a channel repeated in a row one
        segment with that repeat."""
        segments: list[Segment] = []
        i = 0
        while i < len(positions):
            space, c = positions[i]
            j = i + 1
            while j < len(positions) and positions[j] == (space, c):
                j += 1
            if j > i + 1:
                segments.append(Segment(space, 1, j - i, c))
                i = j
                continue
            while j < len(positions) and positions[j] == (space, c + j - i) and (j + 1 >= len(positions) or positions[j + 1] != positions[j]):
                j += 1
            segments.append(Segment(space, j - i, 1, c))
            i = j
        return ChannelLayout(axis, tuple(segments))




Rule = Callable[[gs.Node, Sequence[ChannelLayout | None], "Tracer"], list[ChannelLayout | None]]
