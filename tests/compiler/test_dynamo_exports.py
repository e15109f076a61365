"""Graphs from PyTorch's torch.export-based ONNX exporter (the default since PyTorch 2.9; fixtures
in tests/data, made by tests/data/make_dynamo_exports.py): opset 18+, flattens written as
Reshape(x, [-1, C], allowzero=1), ReduceMean with axes as an input, per-node metadata. Every
pass and the bridge handle them as they handle TorchScript and tf2onnx exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from onnxcompress.compiler.bridge import OnnxModule
from onnxcompress.compiler.cost import model_cost
from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.onnx_io import canonicalize, import_graph
from onnxcompress.compiler.runtime import make_session
from onnxcompress.passes import Plan, apply_plan
from tests.builders import conv_macs

DATA = Path(__file__).resolve().parents[1] / "data"
NAMES = ["mobilenetv2", "mobilenetv3", "efficientnet", "densenet", "vgg"]
X = np.random.default_rng(0).uniform(0, 1, (6, 3, 16, 16)).astype(np.float32)


def load(name: str) -> onnx.ModelProto:
    return onnx.load(str(DATA / f"dynamo_{name}.onnx"))


def run(model: onnx.ModelProto, x: np.ndarray = X) -> np.ndarray:
    s = make_session(model)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def plan(*steps) -> Plan:
    return Plan.from_json({"passes": list(steps)})


def test_fixtures_are_what_the_new_exporter_writes():
    opsets = {n: next(o.version for o in load(n).opset_import if o.domain in ("", "ai.onnx")) for n in NAMES}
    assert min(opsets.values()) >= 18, opsets
    reshapes = [n for n in load("mobilenetv2").graph.node if n.op_type == "Reshape"]
    assert any(a.name == "allowzero" and a.i == 1 for n in reshapes for a in n.attribute)


@pytest.mark.parametrize("name", NAMES)
def test_canonical_form_and_bridge_reproduce_the_export(name):
    teacher = load(name)
    c = canonicalize(teacher)
    ref = run(teacher)
    np.testing.assert_allclose(run(c), ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        got = OnnxModule(c).eval()(torch.from_numpy(X)).numpy()
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("name", NAMES)
def test_uniform_half_prune_is_valid_and_costed(name):
    c = canonicalize(load(name))
    assert np.array_equal(run(apply_plan(c, plan({"pass": "prune_channels", "ratio": 0.0}))), run(c))
    out = apply_plan(c, plan({"pass": "prune_channels", "ratio": 0.5}), calibration=X)
    assert run(out).shape == (6, 10) and run(out, X[:1]).shape == (1, 10)
    assert model_cost(out).macs == conv_macs(out)
    assert model_cost(out).macs < 0.45 * model_cost(c).macs


@pytest.mark.parametrize("name", NAMES)
def test_removal_subset_and_int8(name):
    c = canonicalize(load(name))
    units = analyze(import_graph(c)).removable
    for u in units:
        out = apply_plan(c, plan({"pass": "remove", "block": u.id}))
        assert run(out).shape == (6, 10) and model_cost(out).macs < model_cost(c).macs
    sub = apply_plan(c, plan({"pass": "subset_classes", "classes": [3, 1]}))
    np.testing.assert_allclose(run(sub), run(c)[:, [3, 1]], rtol=1e-5, atol=1e-6)
    q = apply_plan(c, plan({"pass": "quantize", "bits": 8}), calibration=X)
    assert run(q).shape == (6, 10)
    assert (run(q).argmax(1) == run(c).argmax(1)).mean() >= 0.5
