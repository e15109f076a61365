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
    """`length` consecutive channels of one space, each repeated `repeat` times in a row along
    the axis (`width` = length * repeat positions): position i * repeat + r is channel i. A
    repeat > 1 comes from a channel shuffle (its g interleaved copies are the same channels of
    the group) or a GroupNorm (a channel is a whole group of channels)."""

    space: int
    length: int
    repeat: int = 1

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
                m[np.asarray(keep[seg.space], dtype=np.int64)] = True
            else:
                m[:] = True
            parts.append(np.repeat(m, seg.repeat) if seg.repeat != 1 else m)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def indices(self, keep: dict[int, np.ndarray]) -> np.ndarray:
        """Indices along `axis` to keep. For a plain single-space layout the order of `keep` is
        kept (the class-subset pass reorders outputs); otherwise indices come out sorted."""
        if self.block is None and len(self.segments) == 1 and self.segments[0].space in keep and self.segments[0].repeat == 1:
            return np.asarray(keep[self.segments[0].space], dtype=np.int64)
        mask = self.channel_mask(keep)
        if self.block is None:
            return np.flatnonzero(mask)
        shape = list(self.block)
        full = np.arange(int(np.prod(shape))).reshape(shape)
        return np.sort(np.take(full, np.flatnonzero(mask), axis=self.block_axis).reshape(-1))

    def scaled(self, factor: int) -> "ChannelLayout":
        """The layout of a tensor with one entry per `factor` positions of this one (a GroupNorm's
        per-group parameters): every repeat divided by `factor` (callers check divisibility)."""
        return ChannelLayout(self.axis, tuple(Segment(s.space, s.length, s.repeat // factor) for s in self.segments))

    def width(self) -> int:
        """Size of `axis` in the tensor."""
        return self.channels if self.block is None else int(np.prod(self.block))




Rule = Callable[[gs.Node, Sequence[ChannelLayout | None], "Tracer"], list[ChannelLayout | None]]
