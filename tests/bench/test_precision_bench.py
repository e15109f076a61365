"""bench/precision_bench.py's fixed students are valid plans on the real CIFAR ResNets: smaller,
and still the teacher's kind of student (the benchmark itself is `python -m bench precision`)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.realdata


@pytest.mark.parametrize("key", ["resnet20", "resnet56"])
def test_the_benchmark_plans_apply_to_the_real_teachers(realdata, key):
    import numpy as np

    from bench import precision_bench as P
    from onnxcompress.compiler.cost import model_cost
    from onnxcompress.compiler.onnx_io import canonicalize, load_model
    from onnxcompress.compiler.runtime import make_session
    from onnxcompress.passes import Plan, apply_plan

    teacher = canonicalize(load_model(realdata("models", f"cifar10_{key}_akamaster.onnx")))
    x = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    student = apply_plan(teacher, Plan.from_json(P.PLANS[key]), calibration=x, seed=0)
    ratio = model_cost(student).macs / model_cost(teacher).macs
    assert 0.3 < ratio < 0.8
    assert make_session(student).run(None, {student.graph.input[0].name: x})[0].shape == (16, 10)
