"""Uniform 50 % channel pruning on every real model and every reference teacher (issue 3): MACs,
params and the onnxruntime latency ratio to the teacher, measured side by side in one run, plus
the realised speed-up (latency speed-up / MACs reduction).

Latency: each student is timed in pairs with its teacher (`compiler.runtime.compare_latency`):
the ratio is the median over rounds of student time / teacher time measured just before, in CPU
time of the single inference thread (other jobs on this 2-core machine inflate wall time, not CPU
time); the wall-time ratio is given beside it. Reference teachers are the `models/` architectures
with their initial (untrained) weights: structure, cost and latency do not depend on the values.

    python -m bench structural [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnx

from bench.common import REALDATA, header, require_realdata, table, write_result
from onnxcompress.compiler.cost import model_cost
from onnxcompress.compiler.hardware import channel_multiple
from onnxcompress.compiler.onnx_io import canonicalize, load_model
from onnxcompress.compiler.runtime import paired_times
from onnxcompress.passes import Plan, apply_plan

MODELS = [
    "mnist8_cntk_zoo.onnx",
    "cifar10_squeezenet_keras.onnx",
    "cifar10_resnet8_mlperftiny_tf2onnx.onnx",
    "vww_person_mobilenetv2_a050_128_st.onnx",
    "imagenet_squeezenet1.1_fp32_from_winml_fp16.onnx",
]
REFERENCE = ["resnet20", "resnet56", "vgg11", "vgg16", "mobilenetv2", "densenet", "firenet"]
MACS_RANGE = (0.20, 0.35)
MAX_LATENCY = 0.60


def _reference_teacher(arch: str) -> onnx.ModelProto:
    import torch

    from onnxcompress.models.export import to_onnx
    from onnxcompress.models.zoo import ARCHITECTURES

    torch.manual_seed(0)
    return to_onnx(ARCHITECTURES[arch]().eval(), (1, 3, 32, 32))


def _teachers(quick: bool) -> list[tuple[str, onnx.ModelProto]]:
    out = [(m, canonicalize(load_model(REALDATA / "models" / m))) for m in MODELS]
    for arch in REFERENCE[:2] if quick else REFERENCE:
        out.append((f"{arch} (models/, 32x32)", canonicalize(_reference_teacher(arch))))
    return out


def run(quick: bool = False) -> str:
    require_realdata()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    grid = channel_multiple()
    plans = [
        ("ratio 0.5", {"passes": [{"pass": "prune_channels", "ratio": 0.5}]}),
        (f"ratio 0.5, round_to {grid}", {"passes": [{"pass": "prune_channels", "ratio": 0.5, "round_to": grid}]}),
    ]
    rows, misses, t_start = [], [], time.perf_counter()
    for label, teacher in _teachers(quick):
        dims = [d.dim_value for d in teacher.graph.input[0].type.tensor_type.shape.dim][1:]
        sample = np.random.default_rng(0).random([32] + dims).astype(np.float32)
        students, walls = [], []
        for _, plan_json in plans:
            t0 = time.perf_counter()
            students.append(apply_plan(teacher, Plan.from_json(plan_json)))
            walls.append(time.perf_counter() - t0)
        times = paired_times(teacher, students, sample, rounds=5 if quick else 11)
        _, cpu = times.medians(cpu=True)
        base_cpu, _ = times.medians(cpu=True)
        base_wall, wall = times.medians(cpu=False)
        ct = model_cost(teacher)
        for (name, _), student, lc, lw, rewrite in zip(plans, students, cpu, wall, walls):
            cs = model_cost(student)
            macs = cs.macs / ct.macs
            b32, b1 = lc.batch32 / base_cpu.batch32, lc.batch1 / base_cpu.batch1
            rows.append([label, name, f"{macs:.3f}", f"{cs.params / ct.params:.3f}", f"{b1:.3f}", f"{b32:.3f}",
                         f"{lw.batch32 / base_wall.batch32:.3f}", f"{(1 / b32) / (1 / macs):.2f}", f"{rewrite:.1f}"])
            if name == "ratio 0.5":
                if not MACS_RANGE[0] <= macs <= MACS_RANGE[1]:
                    misses.append(f"{label}: MACs {macs:.3f} outside {MACS_RANGE[0]:.2f}-{MACS_RANGE[1]:.2f}")
                if b32 > MAX_LATENCY:
                    misses.append(f"{label}: batch-32 latency {b32:.3f}x > {MAX_LATENCY}x")
    command = "python -m bench structural" + (" --quick" if quick else "")
    text = header("Uniform channel pruning (issue 3)", command)
    text += (
        "\nRatios are student / teacher. Latency: onnxruntime CPU, 1 thread, each student timed in pairs with its "
        f"teacher ({'5' if quick else '11'} rounds), median ratio of the inference thread's CPU time; `b32 wall` is the "
        "same in wall time. Realised = latency speed-up ÷ MACs reduction at batch 32 (CPU time; 1.0 = every saved MAC "
        f"becomes time). `round_to {grid}` keeps channel counts at multiples of {grid}, the channel block of "
        "onnxruntime's NCHWc kernels on this CPU (compiler/hardware.py). Reference teachers: `models/` architectures, "
        f"untrained weights. Whole run {time.perf_counter() - t_start:.0f} s.\n\n"
    )
    text += table(["model", "plan", "MACs", "params", "latency b1", "latency b32", "b32 wall", "realised b32", "rewrite s"], rows)
    text += (f"\n\nDone-criteria for `ratio 0.5` (MACs within {MACS_RANGE[0]:.2f}-{MACS_RANGE[1]:.2f}, batch-32 latency "
             f"≤ {MAX_LATENCY}x): " + ("**met on every model**.\n" if not misses else "**missed** on:\n\n" + "\n".join(f"- {m}" for m in misses) + "\n"))
    return text + NOTES


NOTES = """
Why a uniform plan can miss the latency goal on the small-channel models: onnxruntime runs a
convolution in its blocked NCHWc layout only for whole blocks of channels (16 on this AVX-512 CPU,
8 with AVX2). Halving a 16-channel layer to 8 leaves one half-empty block, so the convolution costs
nearly what it did at 16, and onnxruntime adds a ReorderOutput back to plain NCHW after it (the
next convolution reads fewer than 16 channels). ResNet-8's first stage (16 channels at 32x32,
about half the teacher's time) and the 8/16-channel layers of MNIST-8 and of the MobileNetV2
(alpha 0.5) are of this kind. Wider models (SqueezeNets, the 64-512-channel reference teachers)
turn the MACs they lose into time. `compress` therefore searches on the channel grid
(search/env.py snaps kept counts to multiples of the block when the budget allows), and a
latency target is measured, not predicted from MACs.

MNIST-8 in detail (onnxruntime per-node profile, batch 32, 1 thread, 2026-12-03; teacher 1.04 ms,
student 0.63 ms under the profiler): the first convolution (1 input channel, 5x5, 28x28) costs
the same at 4 output channels as at 8 (197 vs 200 us: its NCHWc kernel computes a 16-channel
block either way) and is a fifth of the teacher's time; the second convolution halves (549 ->
279 us); reorders and pooling (about 120 us) do not shrink. With onnxruntime's NCHWc layout off
(graph optimization level "extended") both convolutions scale with their channels but run
slower than the NCHWc ones (student 0.84 ms). The remaining ~0.1x to the 0.6x goal is this
fixed first-layer cost: no channel rewrite of the plan moves it.
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench structural")
    p.add_argument("--quick", action="store_true", help="two reference teachers, 5 timing rounds")
    args = p.parse_args(argv)
    path = write_result("structural", run(args.quick))
    print(path.read_text())


if __name__ == "__main__":
    main()
