"""The quantize pass: numerics against the float model per precision, real file sizes, per-node
and mixed plans, composition with other steps and with pruning, errors, the precision cost API,
and int8 accuracy on the real MLPerf Tiny ResNet-8."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.passes.quantize import activations, forms
from onnxcompress.compiler.onnx_io import canonicalize, import_graph, opset_of
from onnxcompress.passes.quantize.precision import LayerLatency, PrecisionCost, measure_layer_latency
from onnxcompress.compiler.runtime import make_session, run_batched
from onnxcompress.errors import PlanError
from onnxcompress.passes import Plan, apply_plan
from onnxcompress.passes.quantize import QuantizeParams
from tests.conftest import realdata_path

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------------------------
# small models built in code
# ----------------------------------------------------------------------------------------------


def _init(name: str, shape: tuple[int, ...], scale: float = 0.2) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def residual_cnn(c: int = 16, classes: int = 10) -> onnx.ModelProto:
    """conv-relu, conv-relu, conv + residual add - relu, global pool, flatten, gemm, softmax."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c3", "r1"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "w4", "b4"], ["c4"], name="conv4", strides=[2, 2]),
        helper.make_node("Relu", ["c4"], ["r4"], name="relu4"),
        helper.make_node("GlobalAveragePool", ["r4"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=1),
    ]
    inits = [
        _init("w1", (c, 3, 3, 3), 0.3), _init("b1", (c,), 0.1),
        _init("w2", (c, c, 3, 3), 0.1), _init("b2", (c,), 0.1),
        _init("w3", (c, c, 3, 3), 0.1), _init("b3", (c,), 0.1),
        _init("w4", (2 * c, c, 1, 1), 0.2), _init("b4", (2 * c,), 0.1),
        _init("wf", (2 * c, classes), 0.3), _init("bf", (classes,), 0.1),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "residual_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    return canonicalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))


def matmul_model() -> onnx.ModelProto:
    """A MatMul on the rows of a 4-D image (stays a MatMul, not a Gemm, in canonical form) and a
    Gemm with transB=1 (weight stored as out x in)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("ReduceMean", ["r"], ["m"], name="mean", axes=[1, 2], keepdims=0),
        helper.make_node("Gemm", ["m", "w2", "b2"], ["y"], name="fc", transB=1),
    ]
    inits = [_init("w1", (24, 32)), _init("w2", (6, 32)), _init("b2", (6,), 0.1)]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
        inits,
    )
    return canonicalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))


@pytest.fixture(scope="module")
def cnn() -> onnx.ModelProto:
    return residual_cnn()


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((96, 3, 12, 12)).astype(np.float32)


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    return np.random.default_rng(2).standard_normal((64, 3, 12, 12)).astype(np.float32)


def _logits_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its final Softmax (compare pre-softmax numbers)."""
    graph = import_graph(model)
    sm = next(n for n in graph.nodes if n.op == "Softmax")
    graph.outputs = [sm.inputs[0]]
    sm.outputs[0].dtype = np.float32
    graph.cleanup()
    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = model.ir_version
    return out


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return run_batched(make_session(model), x)


def _quantize(model: onnx.ModelProto, steps: list[dict], data: np.ndarray | None) -> onnx.ModelProto:
    return apply_plan(model, Plan.from_json([{"pass": "quantize", **s} if "pass" not in s else s for s in steps]), calibration=data)


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def _layers(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]


# ----------------------------------------------------------------------------------------------
# numerics and sizes per precision
# ----------------------------------------------------------------------------------------------

# relative L2 error of the logits against the float model: fp16 is weight rounding only; int8
# adds activation rounding; int4 (weight-only, GPTQ) has 15 levels per weight
ERROR_BOUND = {16: 1e-3, 8: 0.03, 4: 0.1}


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_numerics_against_float(cnn, calib, inputs, bits):
    q = _quantize(cnn, [{"bits": bits}], calib)
    ref = _run(_logits_model(cnn), inputs)
    got = _run(_logits_model(q), inputs)
    assert _rel_err(got, ref) < ERROR_BOUND[bits]
    assert np.all(np.isfinite(got))
    assert forms.read_precisions(import_graph(q)) == {n: bits for n in _layers(cnn)}


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_matmul_and_transposed_gemm(bits):
    model = matmul_model()
    assert [n.op_type for n in model.graph.node if n.op_type in ("MatMul", "Gemm")] == ["MatMul", "Gemm"]
    x = np.random.default_rng(3).standard_normal((64, 3, 5, 24)).astype(np.float32)
    q = _quantize(model, [{"bits": bits}], x[:48])
    assert _rel_err(_run(q, x), _run(model, x)) < ERROR_BOUND[bits]


def test_file_size_shrinks_per_precision(cnn, calib):
    sizes = {32: cnn.ByteSize()}
    for bits in (16, 8, 4):
        sizes[bits] = _quantize(cnn, [{"bits": bits}], calib).ByteSize()
    assert sizes[32] > sizes[16] > sizes[8] > sizes[4]
    weights = sum(numpy_helper.to_array(t).nbytes for t in cnn.graph.initializer if t.data_type == TensorProto.FLOAT)
    # what the bytes per element promise, plus scales, int32 biases, Q/DQ nodes: < 25% of the weights
    for bits, per in ((16, 0.5), (8, 0.25), (4, 0.125)):
        assert sizes[bits] < sizes[32] - weights * (1 - per) + 0.25 * weights, bits


def test_int4_is_stored_in_four_bits(cnn, calib):
    q = _quantize(cnn, [{"bits": 4}], calib)
    assert opset_of(q) >= 21 and q.ir_version >= 10
    int4 = [t for t in q.graph.initializer if t.data_type == TensorProto.INT4]
    assert len(int4) == len(_layers(cnn))
    for t in int4:
        assert len(t.raw_data) == (int(np.prod(t.dims)) + 1) // 2  # packed, two per byte
    assert not any(t.data_type == TensorProto.FLOAT and len(t.dims) == 4 for t in q.graph.initializer)
    # the activations stay float: weight-only
    assert not any(n.op_type == "QuantizeLinear" for n in q.graph.node)


def test_int8_is_standard_qdq_and_fuses_in_onnxruntime(cnn, calib, tmp_path):
    q = _quantize(cnn, [{"bits": 8}], calib)
    inits = {t.name: t for t in q.graph.initializer}
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    for n in q.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == TensorProto.INT8:
            scale = numpy_helper.to_array(inits[n.input[1]])
            zp = numpy_helper.to_array(inits[n.input[2]])
            assert scale.ndim == 1 and scale.shape == zp.shape and not zp.any()  # per channel, symmetric
        if n.op_type == "QuantizeLinear":
            assert inits[n.input[2]].data_type == TensorProto.UINT8  # per-tensor uint8 activations
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(q.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert fused.count("QLinearConv") == 4 and "QLinearAdd" in fused and "QGemm" in fused
    assert "Conv" not in fused and "Relu" not in fused  # no float conv left, Relus folded into Q


# ----------------------------------------------------------------------------------------------
# per-node plans, composition
# ----------------------------------------------------------------------------------------------


def test_one_node_leaves_the_others_fp32(cnn, calib):
    q = _quantize(cnn, [{"node": "conv2", "bits": 8}], calib)
    prec = forms.read_precisions(import_graph(q))
    assert prec["conv2"] == 8 and all(b == 32 for n, b in prec.items() if n != "conv2")
    before = {t.name: numpy_helper.to_array(t) for t in cnn.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    for node in q.graph.node:
        if node.op_type in ("Conv", "Gemm") and node.name != "conv2":
            for name in node.input[1:]:
                np.testing.assert_array_equal(after[name], before[name])  # same float weights
    # relu1's output is quantized for conv2 only: the float Add beside it still reads it as is
    producers = {o: n for n in q.graph.node for o in n.output}
    by_name = {n.name: n for n in q.graph.node}
    assert producers[by_name["conv2"].input[0]].op_type == "DequantizeLinear"
    assert {producers[i].op_type for i in by_name["add"].input} == {"Relu", "Conv"}


def test_nodes_map_first_last_8_middle_4_runs(cnn, calib, inputs):
    layers = _layers(cnn)
    plan = {n: (8 if n in (layers[0], layers[-1]) else 4) for n in layers}
    q = _quantize(cnn, [{"nodes": plan}], calib)
    assert forms.read_precisions(import_graph(q)) == plan
    onnx.checker.check_model(q)
    got = _run(_logits_model(q), inputs)
    assert _rel_err(got, _run(_logits_model(cnn), inputs)) < ERROR_BOUND[4]


def _pairs_are_single(model: onnx.ModelProto) -> bool:
    """No tensor is quantized twice (Q -> DQ -> Q -> DQ) and every Q feeds only DQs."""
    producers = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            src = producers.get(n.input[0])
            if src is not None and src.op_type == "DequantizeLinear":
                return False
    return True


def test_steps_compose_into_one_consistent_graph(cnn, calib, inputs):
    layers = _layers(cnn)
    split = _quantize(cnn, [{"bits": 8}, {"node": layers[1], "bits": 4}, {"node": layers[2], "bits": 16}], calib)
    want = {n: 8 for n in layers} | {layers[1]: 4, layers[2]: 16}
    assert forms.read_precisions(import_graph(split)) == want
    assert _pairs_are_single(split)
    one = _quantize(cnn, [{"nodes": want}], calib)
    assert [n.op_type for n in split.graph.node] == [n.op_type for n in one.graph.node]
    ref = _run(_logits_model(cnn), inputs)
    assert abs(_rel_err(_run(_logits_model(split), inputs), ref) - _rel_err(_run(_logits_model(one), inputs), ref)) < 0.05


def test_repeating_a_step_changes_nothing(cnn, calib):
    once = _quantize(cnn, [{"bits": 8}], calib)
    twice = _quantize(cnn, [{"bits": 8}, {"bits": 8}], calib)
    assert once.SerializeToString() == twice.SerializeToString()
    # and an already quantized model re-emits without data when nothing new needs it
    again = apply_plan(once, Plan.from_json([{"pass": "quantize", "node": _layers(cnn)[0], "bits": 16}]), calibration=None)
    assert forms.read_precisions(import_graph(again))[_layers(cnn)[0]] == 16


def test_prune_then_quantize(calib, inputs):
    wide = residual_cnn(c=48)  # weights dominate the file, as in a real model
    plan = [{"pass": "prune_channels", "ratio": 0.5}]
    pruned = apply_plan(wide, Plan.from_json(plan), calibration=calib)
    both = apply_plan(wide, Plan.from_json(plan + [{"pass": "quantize", "bits": 8}]), calibration=calib)
    assert both.ByteSize() < 0.5 * pruned.ByteSize()
    assert _rel_err(_run(_logits_model(both), inputs), _run(_logits_model(pruned), inputs)) < ERROR_BOUND[8]


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_calibration_methods(cnn, calib, inputs, method):
    q = _quantize(cnn, [{"bits": 8, "calibration": method}], calib)
    assert _rel_err(_run(_logits_model(q), inputs), _run(_logits_model(cnn), inputs)) < 2 * ERROR_BOUND[8]


def test_mean_minmax_averages_per_sample_extremes(cnn, calib):
    """"minmax" is the global range of a tensor over the data, "mean_minmax" the mean of each
    sample's min and max (NNCF's estimator), both through onnxruntime's MinMaxCalibrater."""
    from onnxcompress.compiler.runtime import intermediate_outputs

    graph = import_graph(cnn)
    tensor = next(n.outputs[0].name for n in graph.nodes if n.op == "Relu")
    values = intermediate_outputs(cnn, calib, [tensor])[tensor].reshape(len(calib), -1)
    lo, hi = activations.calibrate(cnn, [tensor], calib, "minmax")[tensor]
    assert lo == pytest.approx(values.min(), rel=1e-5) and hi == pytest.approx(values.max(), rel=1e-5)
    lo, hi = activations.calibrate(cnn, [tensor], calib, "mean_minmax")[tensor]
    assert lo == pytest.approx(values.min(axis=1).mean(), rel=1e-4)
    assert hi == pytest.approx(values.max(axis=1).mean(), rel=1e-4)
    assert hi < values.max()  # the samples differ: the mean of their maxima is below the global one
    q = _quantize(cnn, [{"bits": 8, "calibration": "mean_minmax"}], calib)
    assert QuantizeParams.from_json({"bits": 8, "calibration": "mean_minmax"}).to_json()["calibration"] == "mean_minmax"
    assert _rel_err(_run(_logits_model(q), calib[:8]), _run(_logits_model(cnn), calib[:8])) < 4 * ERROR_BOUND[8]


# ----------------------------------------------------------------------------------------------
# errors and params
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits,words", [(8, "int8 needs calibration data: pass --data"), (4, "int4 needs calibration data")])
def test_missing_calibration_is_a_plan_error(cnn, bits, words):
    with pytest.raises(PlanError, match=words):
        _quantize(cnn, [{"bits": bits}], None)


def test_fp16_needs_no_data(cnn):
    q = _quantize(cnn, [{"bits": 16}], None)
    assert any(t.data_type == TensorProto.FLOAT16 for t in q.graph.initializer)


@pytest.mark.parametrize(
    "step,words",
    [
        ({"bits": 3}, "must be one of"),
        ({"bits": True}, "wrong type"),
        ({"node": "conv1"}, "needs \"bits\""),
        ({"nodes": {"conv1": 8}, "bits": 8}, "not both"),
        ({"nodes": {}}, "at least one"),
        ({"bits": 8, "calibration": "kl"}, "unknown calibration"),
        ({"bits": 8, "axis": 0}, "unknown field"),
    ],
)
def test_bad_params(step, words):
    with pytest.raises(PlanError, match=words):
        QuantizeParams.from_json(step)


@pytest.mark.parametrize("node,words", [("nope", "no node named 'nope'"), ("relu1", "no constant weight")])
def test_bad_nodes(cnn, calib, node, words):
    with pytest.raises(PlanError, match=words):
        _quantize(cnn, [{"node": node, "bits": 8}], calib)


@pytest.mark.parametrize(
    "step", [{"bits": 8}, {"node": "conv1", "bits": 4}, {"nodes": {"conv1": 8, "fc": 16}}, {"bits": 4, "calibration": "entropy"}]
)
def test_params_round_trip(step):
    assert QuantizeParams.from_json(step).to_json() == step


# ----------------------------------------------------------------------------------------------
# the precision cost API
# ----------------------------------------------------------------------------------------------


def test_size_bytes_matches_the_written_file(cnn, calib):
    cost = PrecisionCost.build(cnn)
    layers = cost.layers
    maps = [
        {n: 8 for n in layers},
        {n: 4 for n in layers},
        {n: 16 for n in layers},
        {layers[1]: 8},
        {n: (8 if n in (layers[0], layers[-1]) else 4) for n in layers},
    ]
    assert cost.size_bytes({}) == pytest.approx(cnn.ByteSize(), rel=1e-3)
    for bits_by_node in maps:
        written = _quantize(cnn, [{"nodes": bits_by_node}], calib).ByteSize()
        assert cost.size_bytes(bits_by_node) == pytest.approx(written, rel=0.01), bits_by_node
    with pytest.raises(PlanError):
        cost.size_bytes({"relu1": 8})


def test_latency_table(cnn, calib):
    cost = PrecisionCost.build(cnn, calib[:32], precisions=(8, 4), rounds=1)
    assert set(cost.latency) == {(n, b) for n in cost.layers for b in (8, 4)}
    assert all(np.isfinite([e.batch1_ms, e.batch32_ms]).all() for e in cost.latency.values())
    assert cost.fp32_latency is not None and set(cost.uniform_latency) == {8, 4}
    all8 = {n: 8 for n in cost.layers}
    # exact where measured: one layer alone, every layer at 8
    assert cost.latency_ms({cost.layers[0]: 8}) == pytest.approx(cost.fp32_latency.batch32 + cost.latency_delta(cost.layers[0], 8))
    assert cost.latency_ms(all8) == pytest.approx(cost.uniform_latency[8].batch32)
    assert cost.latency_delta(cost.layers[0], 32) == 0.0
    one = measure_layer_latency(cnn, cost.layers[1], 8, calib[:32], rounds=1)
    assert isinstance(one, LayerLatency) and one.node == cost.layers[1] and one.bits == 8


# ----------------------------------------------------------------------------------------------
# real model
# ----------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_resnet8_int8_top1_within_two_points():
    from onnxcompress.compiler.data import InputSpec, Preprocess, load_data
    from onnxcompress.compiler.onnx_io import load_canonical

    _, model = load_canonical(realdata_path("models", "cifar10_resnet8_mlperftiny_tf2onnx.onnx"))
    spec, pre = InputSpec.from_model(model), Preprocess(scale=1.0)  # raw 0..255 pixels
    train = load_data(realdata_path("data", "cifar10_train_lossless.npz"), spec, pre, limit=256)
    test = load_data(realdata_path("data", "cifar10_test_jpeg.npz"), spec, pre, limit=500)
    q = _quantize(model, [{"bits": 8}], train.x)
    top1 = {k: float((_run(m, test.x).argmax(1) == test.y).mean()) for k, m in (("fp32", model), ("int8", q))}
    assert top1["fp32"] > 0.6
    assert abs(top1["int8"] - top1["fp32"]) <= 0.02, top1
    assert q.ByteSize() <= 0.3 * model.ByteSize()


# ----------------------------------------------------------------------------------------------
# the int4 rounding and bias correction, on their own
# ----------------------------------------------------------------------------------------------


def _conv_node(w: np.ndarray, pads: list[int]) -> gs.Node:
    x = gs.Variable("x", dtype=np.float32)
    return gs.Node("Conv", "conv", attrs={"pads": pads}, inputs=[x, gs.Constant("w", w)], outputs=[gs.Variable("y")])


def test_gptq_beats_nearest_rounding_on_the_layer_output():
    from onnxcompress.passes.quantize import gptq

    rng = np.random.default_rng(4)
    mix = rng.standard_normal((48, 48))
    x = rng.standard_normal((4000, 48)) @ mix  # correlated inputs, where GPTQ's compensation pays
    w = rng.standard_normal((16, 48)).astype(np.float32)
    scale = forms.per_channel_scale(w, 4, 0)
    nearest = np.clip(np.round(w / scale[:, None]), -7, 7)
    chosen = gptq.gptq_round(w, x.T @ x, scale, 7)
    assert chosen.dtype == np.int8 and np.abs(chosen).max() <= 7
    err = lambda q: np.linalg.norm(x @ (w - q * scale[:, None]).T)  # noqa: E731
    assert err(chosen) < 0.8 * err(nearest)


def test_bias_shift_restores_the_mean_output():
    from onnxcompress.passes.quantize import gptq

    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    x = (rng.standard_normal((6, 4, 7, 7)) + 0.5).astype(np.float32)  # non-zero mean inputs
    node = _conv_node(w, [1, 1, 1, 1])
    stats = gptq.LayerInputs(node, hessian=False)
    stats.add(x)
    q = forms.round_to_nearest(w, 4, 0)
    wq = q.q * q.scale[:, None, None, None]
    shift = gptq.bias_shift(w.reshape(8, -1), wq.reshape(8, -1), stats)

    def conv(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
            "c",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(weight.astype(np.float32), "w"), numpy_helper.from_array(bias.astype(np.float32), "b")],
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        return make_session(m).run(None, {"x": x})[0].mean(axis=(0, 2, 3))

    zero = np.zeros(8)
    want = conv(w, zero)
    assert np.abs(conv(wq, zero) - want).max() > 1e-3  # int4 rounding does shift the means
    np.testing.assert_allclose(conv(wq, shift), want, atol=1e-4)
