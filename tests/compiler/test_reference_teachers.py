"""Every reference teacher of models/ through the compiler: inspect succeeds, MACs match the
published figures, groups are right, and the canonical form reproduces the export's outputs
(with BN kept as nodes and with BN folded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnxcompress.compiler.cost import model_cost
from onnxcompress.compiler.inspection import inspect_model
from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.onnx_io import canonicalize, import_graph
from onnxcompress.compiler.runtime import make_session
from onnxcompress.models.export import to_onnx
from onnxcompress.models.zoo import ARCHITECTURES
from onnxcompress.passes import Plan, apply_plan
from tests.builders import conv_macs

# each architecture is built and exported first (about a minute in all); inspect of every one is
# also pinned by test_inspect_golden, which stays in the fast lane
pytestmark = pytest.mark.slow

PUBLISHED = {"resnet20": (40.6e6, 0.27e6), "resnet56": (125.5e6, 0.85e6)}
SHAPES = {"demo_cnn": (1, 1, 28, 28)}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def teacher(request):
    torch.manual_seed(0)
    arch = request.param
    module = ARCHITECTURES[arch]().eval()
    shape = SHAPES.get(arch, (1, 3, 32, 32))
    return arch, to_onnx(module, shape, fold_bn=False), shape


def test_inspect_round_trip_and_costs(teacher):
    arch, model, shape = teacher
    canonical = canonicalize(model)
    doc, analysis = inspect_model(arch, model, canonical)
    assert doc["macs"] == conv_macs(canonical) and doc["layers"] and doc["groups"]
    assert not any(n.op_type == "BatchNormalization" for n in canonical.graph.node)  # all foldable
    x = np.random.default_rng(0).standard_normal((4,) + shape[1:]).astype(np.float32)
    a, b = make_session(model), make_session(canonical)
    ya, yb = a.run(None, {a.get_inputs()[0].name: x})[0], b.run(None, {b.get_inputs()[0].name: x})[0]
    assert np.abs(ya - yb).max() <= 1e-4 * max(1.0, np.abs(ya).max())
    if arch in PUBLISHED:
        macs, params = PUBLISHED[arch]
        assert abs(doc["macs"] - macs) / macs < 0.01
        assert abs(doc["params"] - params) / params < 0.03
    if arch.startswith("resnet") and arch != "resnet8":
        coupled = [g for g in analysis.groups if len(g.producers) > 2]
        assert len(coupled) == 3  # one group per stage, coupled through the residual adds
    if arch == "mobilenetv2":
        dw = [l for l in analysis.layers if l.depthwise]
        assert dw and all(any(l.name in g.members for g in analysis.groups) for l in dw)
    if arch == "densenet":
        assert any(len(s.layout.segments) > 2 for s in analysis.slices if s.role == "in")  # concat offsets


def test_uniform_half_prunes_every_teacher(teacher):
    arch, model, shape = teacher
    canonical = canonicalize(model)
    out = apply_plan(canonical, Plan.from_json({"passes": [{"pass": "prune_channels", "ratio": 0.5}]}))
    ratio = model_cost(out).macs / model_cost(canonical).macs
    assert 0.2 <= ratio <= 0.35, ratio
    s = make_session(out)
    y = s.run(None, {s.get_inputs()[0].name: np.zeros((2,) + shape[1:], np.float32)})[0]
    assert y.shape == (2, 10)
