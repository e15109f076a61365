"""What the CPU onnxruntime runs on likes: channel widths that keep convolutions on its fast path.

onnxruntime's CPU provider rewrites convolutions into a blocked NCHWc layout (MLAS) when their
channel counts are multiples of the NCHWc block: 16 floats with AVX-512, 8 with AVX2. A layer
pruned to a width off that grid falls back to the plain im2col path and can be *slower* than the
unpruned layer (measured here: ResNet-8 with 12/24/48 channels runs 1.1x the teacher's time at
0.57x its MACs). onnxruntime does not expose the block size, so we read the CPU flags the same way
MLAS chooses its kernels.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def channel_multiple() -> int:
    """The channel multiple that keeps onnxruntime's CPU convolutions on the NCHWc path."""
    flags = cpu_flags()
    if platform.machine().lower() in ("x86_64", "amd64"):
        if "avx512f" in flags:
            return 16
        if "avx2" in flags or "avx" in flags:
            return 8
        return 4
    return 4  # ARM NEON: 4-float vectors; MLAS uses NCHWc only on x86, so widths matter less


def has_vnni() -> bool:
    """int8 dot-product instructions (AVX-512 VNNI / AVX-VNNI): int8 convolutions are fast."""
    flags = cpu_flags()
    return "avx512_vnni" in flags or "avx_vnni" in flags
