"""The frozen teacher's forward pass during fine-tuning, run by onnxruntime.

Knowledge distillation runs the teacher on every training batch (its inputs are augmented, so its
outputs cannot be cached) and needs no gradients through it. onnxruntime's inference kernels do
that forward pass much faster than the PyTorch bridge's generic ops (the real ResNet-56, batch 64,
2 threads, AMD EPYC: 90 ms vs 206 ms; a training step with the student's forward and backward
0.49 s -> 0.38 s). The teacher's logits and the feature maps the KD loss taps are made graph
outputs of one session.

Used on the CPU only, and only after it reproduced the PyTorch bridge's logits on a sample batch;
otherwise (a model onnxruntime cannot batch, a mismatch, a GPU run) the trainer keeps the bridge.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import torch
from torch import Tensor

from onnxcompress.compiler.bridge import OnnxModule
from onnxcompress.compiler.runtime import make_session, with_outputs

_ATOL = 1e-3  # logits of a float32 network computed by two runtimes differ by ~1e-5


class RuntimeTeacher:
    """`logits(x, taps)` like OnnxModule.logits, computed by an onnxruntime session."""

    def __init__(self, teacher: onnx.ModelProto, logits_name: str, taps: Sequence[str], threads: int) -> None:
        self.names = [logits_name, *[t for t in taps if t != logits_name]]
        # spin=False: the session alternates with PyTorch's training step on the same cores
        self.session = make_session(with_outputs(teacher, self.names), threads=threads, spin=False)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: Tensor) -> dict[str, Tensor]:
        feed = {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
        outs = self.session.run(self.names, feed)
        return {name: torch.from_numpy(np.asarray(out)) for name, out in zip(self.names, outs)}

    def logits(self, x: Tensor, taps: Sequence[str] | None = None) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        env = self.run(x)
        z = env[self.names[0]].flatten(1)
        if taps is None:
            return z
        return z, {n: env[n] for n in taps}


def runtime_teacher(teacher: onnx.ModelProto, bridge: OnnxModule, taps: Sequence[str], sample: np.ndarray,
                    threads: int) -> RuntimeTeacher | None:
    """A RuntimeTeacher that agrees with the bridge's forward pass on `sample` (a few training
    inputs, batch > 1), else None."""
    try:
        fast = RuntimeTeacher(teacher, bridge.logits_name, taps, threads)
        x = torch.from_numpy(np.array(sample, dtype=np.float32))  # a copy: the data may be read-only
        got_z, got_f = fast.logits(x, list(taps))  # with taps given (even none), both return (logits, features)
        with torch.no_grad():
            want_z, want_f = bridge.logits(x, list(taps))
    except Exception:  # noqa: BLE001 - any failure of the fast path means: use the bridge
        return None
    pairs = [(got_z, want_z)] + [(got_f[n], want_f[n]) for n in taps]
    for a, b in pairs:
        if a.shape != b.shape or not torch.allclose(a, b.float(), atol=_ATOL, rtol=1e-3):
            return None
    return fast
