"""Uniform 50 % channel pruning on every real model (issue 3): MACs, params and the onnxruntime
latency ratio measured side by side with the teacher, plus the realised speed-up
(latency speed-up / MACs reduction).

    python -m bench structural
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import REALDATA, header, require_realdata, table, write_result
from onnxcompress.compiler.cost import model_cost
from onnxcompress.compiler.onnx_io import canonicalize, load_model
from onnxcompress.compiler.runtime import compare_latency
from onnxcompress.passes import Plan, apply_plan

MODELS = [
    "mnist8_cntk_zoo.onnx",
    "cifar10_squeezenet_keras.onnx",
    "cifar10_resnet8_mlperftiny_tf2onnx.onnx",
    "vww_person_mobilenetv2_a050_128_st.onnx",
    "imagenet_squeezenet1.1_fp32_from_winml_fp16.onnx",
]


def run(quick: bool = False, extra_models: list = ()) -> str:
    require_realdata()
    rows = []
    for label, path in [(m, REALDATA / "models" / m) for m in MODELS] + list(extra_models):
        teacher = canonicalize(load_model(path))
        dims = [d.dim_value for d in teacher.graph.input[0].type.tensor_type.shape.dim][1:]
        sample = np.random.default_rng(0).random([32] + dims).astype(np.float32)
        for plan_json, name in (
            ({"passes": [{"pass": "prune_channels", "ratio": 0.5}]}, "ratio 0.5"),
            ({"passes": [{"pass": "prune_channels", "ratio": 0.5, "round_to": 8}]}, "ratio 0.5, round_to 8"),
        ):
            t0 = time.perf_counter()
            student = apply_plan(teacher, Plan.from_json(plan_json))
            wall = time.perf_counter() - t0
            lt, ls = compare_latency([teacher, student], sample, rounds=3 if quick else 7)
            ct, cs = model_cost(teacher), model_cost(student)
            macs = cs.macs / ct.macs
            b32 = ls.batch32 / lt.batch32
            rows.append([label, name, f"{macs:.3f}", f"{cs.params / ct.params:.3f}", f"{ls.batch1 / lt.batch1:.3f}", f"{b32:.3f}", f"{(1 / b32) / (1 / macs):.2f}", f"{wall:.1f}"])
    text = header("Uniform channel pruning (issue 3)", "python -m bench structural")
    text += "\nRatios are student / teacher, latency measured side by side in one run (onnxruntime CPU, 1 thread).\n"
    text += "Realised = latency speed-up ÷ MACs reduction at batch 32 (1.0 = every saved MAC becomes time).\n\n"
    text += table(["model", "plan", "MACs", "params", "latency b1", "latency b32", "realised b32", "rewrite s"], rows)
    return text


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    path = write_result("structural", run(args.quick))
    print(path.read_text())


if __name__ == "__main__":
    main()
