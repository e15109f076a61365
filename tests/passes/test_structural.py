"""prune_channels, remove, subset_classes and the plan machinery, checked with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from onnxcompress.compiler.cost import SearchCost, model_cost
from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.onnx_io import canonicalize, import_graph
from onnxcompress.compiler.runtime import make_session
from onnxcompress.errors import PlanError
from onnxcompress.passes import Plan, apply_plan
from tests.builders import GraphBuilder, conv_macs, fire_like, mobilenet_like, resnet_like

X = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)


def run(model, x=X):
    s = make_session(model)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def plan(*steps):
    return Plan.from_json({"passes": list(steps)})


@pytest.mark.parametrize("make", [resnet_like, fire_like, mobilenet_like])
def test_empty_plan_and_ratio_zero_reproduce_teacher(make):
    c = canonicalize(make())
    ref = run(c)
    assert np.array_equal(run(apply_plan(c, plan())), ref)
    assert np.array_equal(run(apply_plan(c, plan({"pass": "prune_channels", "ratio": 0.0}))), ref)


@pytest.mark.parametrize("make", [resnet_like, fire_like, mobilenet_like])
def test_uniform_half_prunes_and_cost_matches(make):
    c = canonicalize(make())
    out = apply_plan(c, plan({"pass": "prune_channels", "ratio": 0.5}))
    assert run(out).shape == run(c).shape
    assert model_cost(out).macs == conv_macs(out)
    assert model_cost(out).macs < 0.45 * model_cost(c).macs


def test_prune_by_group_count_and_indices_and_prediction():
    c = canonicalize(resnet_like())
    a = analyze(import_graph(c))
    gid = next(g.id for g in a.groups if g.prunable and len(g.producers) > 1)
    out = apply_plan(c, plan({"pass": "prune_channels", "group": gid, "keep": 3}))
    assert model_cost(out).macs == SearchCost(a).macs({gid: 3})
    out2 = apply_plan(c, plan({"pass": "prune_channels", "group": gid, "indices": [0, 2, 5]}))
    assert model_cost(out2).macs == model_cost(out).macs
    # keeping every channel explicitly is the identity
    full = apply_plan(c, plan({"pass": "prune_channels", "group": gid, "indices": list(range(8))}))
    np.testing.assert_allclose(run(full), run(c), rtol=1e-5, atol=1e-5)


def test_zero_weight_channels_are_pruned_losslessly():
    """A channel whose outgoing weights are all zero contributes nothing: l1 picks it and the
    pruned model reproduces the teacher exactly."""
    m = fire_like()
    c = canonicalize(m)
    a = analyze(import_graph(c))
    squeeze = a.layers[1]  # the 1x1 squeeze conv, 4 channels
    gid = squeeze.out_group
    for init in c.graph.initializer:
        for n in c.graph.node:
            if n.name == squeeze.name and init.name == n.input[1]:
                w = onnx.numpy_helper.to_array(init).copy()
                w[2] = 0.0
                init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
            if n.name == squeeze.name and len(n.input) > 2 and init.name == n.input[2]:
                b = onnx.numpy_helper.to_array(init).copy()
                b[2] = -1.0  # relu(0 - 1) = 0: channel 2 is dead
                init.CopyFrom(onnx.numpy_helper.from_array(b, init.name))
    out = apply_plan(c, plan({"pass": "prune_channels", "group": gid, "keep": 3}))
    np.testing.assert_allclose(run(out), run(c), rtol=1e-4, atol=1e-5)


def test_reconstruction_reduces_error():
    c = canonicalize(resnet_like(width=16))
    calib = np.random.default_rng(1).standard_normal((64, 3, 8, 8)).astype(np.float32)
    step = {"pass": "prune_channels", "ratio": 0.5}
    plain = apply_plan(c, plan(dict(step, reconstruct=False)), calibration=calib)
    fitted = apply_plan(c, plan(dict(step, reconstruct=True)), calibration=calib)
    ref = run(c)
    assert np.abs(run(fitted) - ref).mean() < 0.8 * np.abs(run(plain) - ref).mean()


@pytest.mark.parametrize("make", [resnet_like, fire_like, mobilenet_like])
def test_refit_from_cached_layer_inputs_equals_refit_from_the_network_input(make, monkeypatch):
    """The refit computes each layer's input from the (cached) inputs of the layers fitted before
    it instead of from the network input: same weights, across residual adds, concats and
    depthwise layers."""
    import onnxcompress.passes.reconstruct as rec

    c = canonicalize(make())
    calib = np.random.default_rng(2).standard_normal((300, 3, 8, 8)).astype(np.float32)
    step = plan({"pass": "prune_channels", "ratio": 0.5, "reconstruct": True})
    cached = apply_plan(c, step, calibration=calib)
    fitted_layers = []

    def from_input(model, layers, counts):  # the plain way: every input from the network input
        fitted_layers.extend(n.name for n in layers)
        names = [n.inputs[0].name for n in layers]
        return rec._Sources([set() for _ in layers], {n: max(k for m, k in zip(names, counts) if m == n) for n in names},
                            {n: max(i for i, m in enumerate(names) if m == n) for n in names})

    monkeypatch.setattr(rec, "_sources", from_input)
    plain = apply_plan(c, step, calibration=calib)
    assert len(fitted_layers) >= 2
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in plain.graph.initializer}
    for init in cached.graph.initializer:
        w = onnx.numpy_helper.to_array(init)
        np.testing.assert_allclose(w, weights[init.name], rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(w).max())))


def test_removal_refit_reduces_error_and_keeps_the_architecture():
    c = canonicalize(resnet_like(width=16, blocks=2))
    calib = np.random.default_rng(1).standard_normal((64, 3, 8, 8)).astype(np.float32)
    block = next(u.id for u in analyze(import_graph(c)).removable if u.kind == "residual_block")
    step = {"pass": "remove", "block": block}
    plain = apply_plan(c, plan(dict(step, reconstruct=False)), calibration=calib)
    fitted = apply_plan(c, plan(step), calibration=calib)  # default: refit when data is given
    ref = run(c)
    assert np.abs(run(fitted) - ref).mean() < 0.8 * np.abs(run(plain) - ref).mean()
    assert model_cost(fitted) == model_cost(plain)
    assert [n.op_type for n in fitted.graph.node] == [n.op_type for n in plain.graph.node]
    assert plan(dict(step, reconstruct=True)).to_json()["passes"][0]["reconstruct"] is True
    with pytest.raises(PlanError, match="calibration"):
        apply_plan(c, plan(dict(step, reconstruct=True)))


@pytest.mark.parametrize("criterion", ["l2", "bn", "activation", "apoz"])
def test_other_criteria(criterion):
    c = canonicalize(resnet_like())
    calib = np.random.default_rng(1).standard_normal((32, 3, 8, 8)).astype(np.float32)
    out = apply_plan(c, plan({"pass": "prune_channels", "ratio": 0.5, "criterion": criterion}), calibration=calib)
    assert run(out).shape == (16, 10)


def test_data_criterion_needs_data():
    c = canonicalize(resnet_like())
    with pytest.raises(PlanError, match="calibration data"):
        apply_plan(c, plan({"pass": "prune_channels", "ratio": 0.5, "criterion": "activation"}))


class _TinyResNet(torch.nn.Module):
    def __init__(self, skip_block: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1)) for _ in range(3)
        )
        self.fc = torch.nn.Linear(8, 10)
        self.skip = skip_block

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for i, b in enumerate(self.blocks):
            if i != self.skip:
                x = torch.relu(x + b(x))
        return self.fc(x.mean((2, 3)))


def test_remove_residual_block_matches_pytorch_without_it(tmp_path):
    net = _TinyResNet().eval()
    path = tmp_path / "r.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 8, 8), str(path), input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}}, dynamo=False, opset_version=17)
    c = canonicalize(onnx.load(str(path)))
    a = analyze(import_graph(c))
    blocks = [u for u in a.removable if u.kind == "residual_block"]
    assert len(blocks) == 3
    out = apply_plan(c, plan({"pass": "remove", "block": blocks[1].id}))
    net.skip = 1
    with torch.no_grad():
        expect = net(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(run(out), expect, rtol=1e-4, atol=1e-5)
    assert model_cost(out).macs == model_cost(c).macs - blocks[1].macs


def test_remove_layer_and_ids_stay_stable_across_passes():
    c = canonicalize(resnet_like(blocks=2))
    a = analyze(import_graph(c))
    blocks = [u.id for u in a.removable if u.kind == "residual_block"]
    out = apply_plan(c, plan({"pass": "remove", "block": blocks[0]}, {"pass": "remove", "block": blocks[1]}))
    assert model_cost(out).macs < model_cost(c).macs
    layer = next(u.id for u in a.removable if u.kind == "layer")
    out2 = apply_plan(c, plan({"pass": "remove", "block": layer}))
    assert run(out2).shape == (16, 10)


@pytest.mark.parametrize("softmax", [False, True])
def test_subset_classes_keeps_logits_in_order(softmax):
    g = GraphBuilder()
    x = g.relu(g.conv("x", 3, 8))
    m = g.build(g.head(x, 8, classes=10, softmax=softmax))
    c = canonicalize(m)
    out = apply_plan(c, plan({"pass": "subset_classes", "classes": [3, 1]}))
    got = run(out)
    assert got.shape == (16, 2)
    ref = run(c)
    if softmax:
        # within the kept classes the teacher's logit differences are preserved
        np.testing.assert_allclose(np.log(got[:, 0] / got[:, 1]), np.log(ref[:, 3] / ref[:, 1]), rtol=1e-4, atol=1e-4)
    else:
        np.testing.assert_allclose(got, ref[:, [3, 1]], rtol=1e-6, atol=1e-6)


def test_subset_then_prune_composes():
    c = canonicalize(resnet_like())
    out = apply_plan(c, plan({"pass": "subset_classes", "classes": [0, 9, 4]}, {"pass": "prune_channels", "ratio": 0.5}))
    assert run(out).shape == (16, 3)


@pytest.mark.parametrize(
    "steps,message",
    [
        ([{"pass": "fold_everything"}], "unknown pass"),
        ([{"pass": "prune_channels", "group": "g99", "keep": 2}], "unknown group"),
        ([{"pass": "prune_channels", "ratio": 1.0}], r"\[0, 1\)"),
        ([{"pass": "prune_channels", "ratio": -0.1}], r"\[0, 1\)"),
        ([{"pass": "prune_channels", "ratio": 0.5, "group": "g0"}], "exactly one"),
        ([{"pass": "subset_classes", "classes": [3, 10]}], "out of range"),
        ([{"pass": "subset_classes", "classes": []}], "non-empty"),
        ([{"pass": "remove", "block": "b42"}], "unknown removable block"),
        ([{"pass": "remove"}], "block"),
        ([{"pass": "prune_channels", "ratio": 0.5, "bogus": 1}], "unknown field"),
    ],
)
def test_bad_plans_rejected(steps, message):
    c = canonicalize(resnet_like())
    with pytest.raises(PlanError, match=message):
        apply_plan(c, Plan.from_json({"passes": steps}))


def test_frozen_group_rejected():
    c = canonicalize(resnet_like())
    a = analyze(import_graph(c))
    frozen = next(g.id for g in a.groups if not g.prunable)
    with pytest.raises(PlanError, match="cannot be pruned"):
        apply_plan(c, plan({"pass": "prune_channels", "group": frozen, "keep": 2}))


def test_plan_json_round_trip():
    p = plan({"pass": "prune_channels", "groups": {"g1": 3, "g0": 2}}, {"pass": "remove", "block": "b1"}, {"pass": "subset_classes", "classes": [2, 0]})
    assert Plan.from_json(p.to_json()) == p


def test_round_to_keeps_hardware_friendly_widths():
    c = canonicalize(resnet_like(width=16))
    out = apply_plan(c, plan({"pass": "prune_channels", "ratio": 0.6, "round_to": 8}))
    widths = {l.out_channels for l in analyze(import_graph(out)).layers[:-1]}
    assert widths == {8}
    from onnxcompress.passes.prune_channels import rounded_keep

    assert rounded_keep(16, 3.0, 8) == 8 and rounded_keep(16, 13.0, 8) == 16 and rounded_keep(6, 2.0, 8) == 6


@pytest.mark.parametrize("fixed_batch", [False, True])
def test_head_reshape_with_allowzero_is_pruned(fixed_batch):
    # PyTorch's dynamo exporter (opset 18+) flattens with Reshape(x, [-1, C], allowzero=1); a cut
    # rewrites the target to [0, -1] (0 = copy the batch dim), which allowzero=1 would read as a
    # literal 0 ("Invalid Target shape product of 0"). The same holds for a fixed batch of 16.
    g = GraphBuilder(seed=3, opset=18)
    x = g.relu(g.conv("x", 3, 16))
    x = g.relu(g.add(x, g.conv(g.relu(g.conv(x, 16, 16)), 16, 16)))
    p = g.node("ReduceMean", [x, g.const(np.array([-1, -2], np.int64), "axes")], keepdims=1)
    f = g.node("Reshape", [p, g.const(np.array([16 if fixed_batch else -1, 16], np.int64), "shape")], allowzero=1)
    w = g.const((g.rng.standard_normal((10, 16)) * 0.3).astype(np.float32))
    teacher = g.build(g.node("Gemm", [f, w], transB=1))
    if fixed_batch:
        teacher.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 16
    c = canonicalize(teacher)
    np.testing.assert_allclose(run(c), run(teacher), rtol=1e-5, atol=1e-6)
    out = apply_plan(c, plan({"pass": "prune_channels", "ratio": 0.5}))
    assert run(out).shape == (16, 10) and run(out, X[:5]).shape == (5, 10)
    assert model_cost(out).macs == conv_macs(out)
