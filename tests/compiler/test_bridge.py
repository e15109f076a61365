"""The PyTorch bridge against onnxruntime: one small graph per op family (built in code), the real
models in ../shared/realdata, write-back, BatchNorm re-insertion and recalibration."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.compiler.bridge import OnnxModule, recalibrate_bn, to_torch
from onnxcompress.compiler.data import InputSpec
from onnxcompress.compiler.runtime import make_session
from onnxcompress.errors import UnsupportedOpError
from tests.conftest import REAL_MODELS, realdata_path

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------
# Builders shared with test_kd / test_trainer
# ---------------------------------------------------------------------------------------------


def make_model(
    nodes: Sequence[onnx.NodeProto],
    x_shape: Sequence[int | str],
    out_shape: Sequence[int | str] | None = None,
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = 13,
    x_name: str = "x",
    out_name: str = "y",
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None if out_shape is None else list(out_shape))],
        initializer=list(initializers),
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


def init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = make_session(model, optimize=False)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def bridge_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    module = OnnxModule(model).eval()
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def assert_matches_ort(model: onnx.ModelProto, x: np.ndarray, tol: float = 1e-4) -> None:
    expected = ort_run(model, x)
    got = bridge_run(model, x)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(got.astype(np.float64) - expected).max() <= tol * scale


def tiny_cnn(classes: int = 4, channels: int = 1, size: int = 8, width: int = 8, softmax: bool = True,
             bn: bool = False, seed: int = 0, nhwc: bool = False) -> onnx.ModelProto:
    """Conv(bias)-Relu-Conv(stride 2)-Relu-GAP-Flatten-Gemm[-Softmax]: a folded-BN CNN in
    miniature; `bn=True` puts an explicit BatchNormalization after the first conv."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((width, channels, 3, 3)) * (2 / (9 * channels)) ** 0.5).astype(np.float32)
    w2 = (rng.standard_normal((width, width, 3, 3)) * (2 / (9 * width)) ** 0.5).astype(np.float32)
    fc = (rng.standard_normal((classes, width)) * (1 / width) ** 0.5).astype(np.float32)
    inits = [
        init("conv1.weight", w1),
        init("conv1.bias", np.zeros(width, np.float32) if bn else rng.standard_normal(width).astype(np.float32) * 0.1),
        init("conv2.weight", w2),
        init("conv2.bias", rng.standard_normal(width).astype(np.float32) * 0.1),
        init("fc.weight", fc),
        init("fc.bias", np.zeros(classes, np.float32)),
    ]
    nodes = []
    src = "x"
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2], name="to_nchw"))
        src = "x_nchw"
    nodes.append(helper.make_node("Conv", [src, "conv1.weight", "conv1.bias"], ["c1"], pads=[1, 1, 1, 1], name="conv1"))
    act_in = "c1"
    if bn:
        inits += [
            init("bn.scale", np.ones(width, np.float32)),
            init("bn.bias", np.zeros(width, np.float32)),
            init("bn.mean", np.zeros(width, np.float32)),
            init("bn.var", np.ones(width, np.float32)),
        ]
        bn_inputs = ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"]
        nodes.append(helper.make_node("BatchNormalization", bn_inputs, ["b1"], name="bn"))
        act_in = "b1"
    nodes += [
        helper.make_node("Relu", [act_in], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2],
                         name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits" if softmax else "y"], transB=1, name="fc"),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["y"], axis=1, name="softmax"))
    shape = ["N", size, size, channels] if nhwc else ["N", channels, size, size]
    return make_model(nodes, shape, ["N", classes], inits)


# ---------------------------------------------------------------------------------------------
# One graph per op family
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attrs, w_shape",
    [
        ({"pads": [1, 1, 1, 1]}, (6, 4, 3, 3)),
        ({"pads": [0, 1, 2, 1], "strides": [2, 1]}, (6, 4, 3, 3)),  # asymmetric pads
        ({"group": 2, "pads": [1, 1, 1, 1], "dilations": [2, 2]}, (6, 2, 3, 3)),  # grouped, dilated
        ({"group": 4, "pads": [1, 1, 1, 1], "strides": [2, 2]}, (4, 1, 3, 3)),  # depthwise
        ({"group": 4}, (8, 1, 3, 3)),  # depthwise with multiplier 2
        ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (6, 4, 4, 4)),
        ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (6, 4, 4, 4)),
        ({"auto_pad": "VALID", "strides": [3, 3]}, (6, 4, 2, 2)),
    ],
)
def test_conv_variants(attrs: dict, w_shape: tuple[int, ...]) -> None:
    inits = [init("w", rand(*w_shape)), init("b", rand(w_shape[0]))]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(w_shape[2:]), **attrs)
    assert_matches_ort(make_model([node], [2, 4, 9, 11], initializers=inits), rand(2, 4, 9, 11))


def test_conv1d_without_bias() -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[2, 1])
    assert_matches_ort(make_model([node], [2, 3, 10], initializers=[init("w", rand(5, 3, 4))]), rand(2, 3, 10))


@pytest.mark.parametrize("trans_a, trans_b, alpha, beta", [(0, 1, 1.0, 1.0), (1, 0, 0.5, 2.0), (1, 1, 1.0, 0.0)])
def test_gemm(trans_a: int, trans_b: int, alpha: float, beta: float) -> None:
    a_shape = (5, 3) if trans_a else (3, 5)
    b = rand(4, 5) if trans_b else rand(5, 4)
    node = helper.make_node("Gemm", ["x", "b", "c"], ["y"], transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    model = make_model([node], list(a_shape), initializers=[init("b", b), init("c", rand(4))])
    assert_matches_ort(model, rand(*a_shape))


def test_matmul_and_binary_broadcasting() -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("Sub", ["a", "s"], ["s1"]),
        helper.make_node("Mul", ["s1", "k"], ["m1"]),
        helper.make_node("Div", ["m1", "d"], ["d1"]),
        helper.make_node("Sum", ["d1", "m", "b"], ["s2"]),
        helper.make_node("Max", ["s2", "a"], ["mx"]),
        helper.make_node("Min", ["mx", "m1", "k"], ["mn"]),
        helper.make_node("Pow", ["mn", "two"], ["y"]),
    ]
    inits = [init("w", rand(6, 4)), init("b", rand(4)), init("s", rand(1)), init("k", rand(3, 1)),
             init("d", np.float32(2.5)), init("two", np.float32(2.0))]
    assert_matches_ort(make_model(nodes, [2, 3, 6], initializers=inits), rand(2, 3, 6))


def test_legacy_broadcast_axis_opset6() -> None:
    node = helper.make_node("Add", ["x", "b"], ["y"], broadcast=1, axis=1)
    model = make_model([node], [2, 3, 4, 5], initializers=[init("b", rand(3))], opset=6)
    x = rand(2, 3, 4, 5)
    expected = x + numpy_helper.to_array(model.graph.initializer[0]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(bridge_run(model, x), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "op, attrs",
    [
        ("Relu", {}),
        ("LeakyRelu", {"alpha": 0.2}),
        ("Sigmoid", {}),
        ("Tanh", {}),
        ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
        ("HardSwish", {}),
        ("Elu", {"alpha": 0.7}),
        ("Exp", {}),
        ("Neg", {}),
        ("Abs", {}),
        ("Erf", {}),
        ("Floor", {}),
        ("Ceil", {}),
    ],
)
def test_activations(op: str, attrs: dict) -> None:
    opset = 14 if op == "HardSwish" else 13
    model = make_model([helper.make_node(op, ["x"], ["y"], **attrs)], [2, 3, 4, 4], opset=opset)
    assert_matches_ort(model, rand(2, 3, 4, 4, scale=3.0))


def test_positive_unary_ops() -> None:
    nodes = [helper.make_node("Sqrt", ["x"], ["s"]), helper.make_node("Log", ["s"], ["l"]),
             helper.make_node("Reciprocal", ["x"], ["r"]), helper.make_node("Add", ["l", "r"], ["y"])]
    assert_matches_ort(make_model(nodes, [2, 5]), np.abs(rand(2, 5)) + 0.5)


def test_prelu_channel_slopes() -> None:
    node = helper.make_node("PRelu", ["x", "slope"], ["y"])
    model = make_model([node], [2, 3, 4, 4], initializers=[init("slope", rand(3, 1, 1))])
    assert_matches_ort(model, rand(2, 3, 4, 4))
    assert "slope" in OnnxModule(model).param_names


@pytest.mark.parametrize("opset", [7, 9, 13, 17, 21])
def test_clip_forms(opset: int) -> None:
    if opset < 11:
        node = helper.make_node("Clip", ["x"], ["y"], min=0.0, max=6.0)
        inits = []
    else:
        node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"])
        inits = [init("lo", np.float32(0.0)), init("hi", np.float32(6.0))]
    model = make_model([node], [2, 3, 4], initializers=inits, opset=opset)
    assert_matches_ort(model, rand(2, 3, 4, scale=5.0))
    assert not OnnxModule(model).param_names  # bounds are constants, never trained


def test_clip_only_max() -> None:
    node = helper.make_node("Clip", ["x", "", "hi"], ["y"])
    assert_matches_ort(make_model([node], [2, 6], initializers=[init("hi", np.float32(0.5))]), rand(2, 6))


@pytest.mark.parametrize("opset", [7, 9, 13, 17, 21])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [None, 1, 2, -1])
def test_softmax_semantics(opset: int, op: str, axis: int | None) -> None:
    attrs = {} if axis is None else {"axis": axis}
    model = make_model([helper.make_node(op, ["x"], ["y"], **attrs)], [2, 3, 4, 5], opset=opset)
    assert_matches_ort(model, rand(2, 3, 4, 5, scale=3.0))


def test_batchnorm_inference() -> None:
    inits = [init("s", rand(3)), init("b", rand(3)), init("m", rand(3)), init("v", np.abs(rand(3)) + 0.5)]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)
    model = make_model([node], [2, 3, 4, 4], initializers=inits)
    assert_matches_ort(model, rand(2, 3, 4, 4))
    module = OnnxModule(model)
    assert set(module.param_names) == {"s", "b"}
    assert {k for k in module.state_dict() if k.startswith("stats.")} == {"stats.t_m", "stats.t_v"}


def test_instance_group_and_layer_norms() -> None:
    # GroupNorm as PyTorch exports it (InstanceNormalization over [N, groups, -1]) and as an op
    inits = [init("s", rand(4)), init("b", rand(4))]
    node = helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-5)
    assert_matches_ort(make_model([node], [2, 4, 12], initializers=inits, opset=17), rand(2, 4, 12))
    inits = [init("s", rand(8)), init("b", rand(8))]
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=4, epsilon=1e-5)
    assert_matches_ort(make_model([node], [2, 8, 3, 3], initializers=inits, opset=21), rand(2, 8, 3, 3))
    for axis, shape in ((-1, [6]), (1, [3, 4, 4])):
        inits = [init("s", rand(*shape)), init("b", rand(*shape))]
        node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=axis, epsilon=1e-5)
        assert_matches_ort(make_model([node], [2, 3, 4, 4] if axis == 1 else [2, 5, 6], initializers=inits, opset=17),
                           rand(*([2, 3, 4, 4] if axis == 1 else [2, 5, 6])))


@pytest.mark.parametrize(
    "op, attrs",
    [
        ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2]}),
        ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 0, 1, 2]}),
        ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
        ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
        ("MaxPool", {"kernel_shape": [2, 2], "dilations": [2, 2]}),
        ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
        ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2]}),
        ("AveragePool", {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}),
        ("AveragePool", {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
        ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 1, 2, 0], "count_include_pad": 1}),
        ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
        ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1,
                         "count_include_pad": 1}),
        ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ],
)
def test_pools(op: str, attrs: dict) -> None:
    model = make_model([helper.make_node(op, ["x"], ["y"], **attrs)], [2, 3, 10, 9], opset=13)
    assert_matches_ort(model, rand(2, 3, 10, 9))


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pools(op: str) -> None:
    assert_matches_ort(make_model([helper.make_node(op, ["x"], ["y"])], [2, 3, 5, 6]), rand(2, 3, 5, 6))


@pytest.mark.parametrize("opset", [7, 9, 13, 17, 21])
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_forms(opset: int, mode: str) -> None:
    pads = [0, 0, 1, 2, 0, 0, 2, 1]
    if opset < 11:
        node = helper.make_node("Pad", ["x"], ["y"], pads=pads, mode=mode, value=0.5 if mode == "constant" else 0.0)
        inits = []
    else:
        node = helper.make_node("Pad", ["x", "pads", "v"], ["y"], mode=mode)
        inits = [init("pads", np.asarray(pads, np.int64)), init("v", np.float32(0.5 if mode == "constant" else 0.0))]
    assert_matches_ort(make_model([node], [2, 3, 4, 5], initializers=inits, opset=opset), rand(2, 3, 4, 5))


def test_pad_axes_input_opset18_and_negative_pads() -> None:
    node = helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"])
    inits = [init("pads", np.asarray([1, -1, 2, 1], np.int64)), init("axes", np.asarray([2, -1], np.int64))]
    assert_matches_ort(make_model([node], [2, 3, 4, 5], initializers=inits, opset=18), rand(2, 3, 4, 5))


@pytest.mark.parametrize("opset", [7, 9, 13, 17, 21])
def test_squeeze_unsqueeze_forms(opset: int) -> None:
    if opset < 13:
        nodes = [helper.make_node("Squeeze", ["x"], ["s"], axes=[1, 3]),
                 helper.make_node("Unsqueeze", ["s"], ["y"], axes=[0, 3] if opset < 11 else [0, -1])]
        inits = []
    else:
        nodes = [helper.make_node("Squeeze", ["x", "ax"], ["s"]), helper.make_node("Unsqueeze", ["s", "ux"], ["y"])]
        inits = [init("ax", np.asarray([1, -1], np.int64)), init("ux", np.asarray([0, -1], np.int64))]
    assert_matches_ort(make_model(nodes, [2, 1, 5, 1], initializers=inits, opset=opset), rand(2, 1, 5, 1))


def test_squeeze_without_axes() -> None:
    assert_matches_ort(make_model([helper.make_node("Squeeze", ["x"], ["y"])], [2, 1, 5, 1]), rand(2, 1, 5, 1))


def test_shape_ops_flatten_pipeline() -> None:
    """The PyTorch-export flatten: Shape -> Gather -> Unsqueeze -> Concat -> Reshape, plus
    Transpose, Identity, Dropout, Constant, Cast, Flatten, Slice and a 0/-1 Reshape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.asarray(0, np.int64))),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Identity", ["t"], ["i"]),
        helper.make_node("Dropout", ["i"], ["d"]),
        helper.make_node("Cast", ["d"], ["c"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["c", "target"], ["r"]),
        helper.make_node("Slice", ["r", "st", "en", "axs", "stp"], ["sl"]),
        helper.make_node("Reshape", ["sl", "shape0"], ["r0"]),
        helper.make_node("Flatten", ["r0"], ["y"], axis=1),
    ]
    inits = [init("ax0", np.asarray([0], np.int64)), init("minus1", np.asarray([-1], np.int64)),
             init("st", np.asarray([1], np.int64)), init("en", np.asarray([100], np.int64)),
             init("axs", np.asarray([-1], np.int64)), init("stp", np.asarray([2], np.int64)),
             init("shape0", np.asarray([0, 5, -1], np.int64))]
    assert_matches_ort(make_model(nodes, [2, 3, 4, 5], initializers=inits), rand(2, 3, 4, 5))


def test_gather_negative_indices_and_slice_negative_step() -> None:
    nodes = [
        helper.make_node("Gather", ["x", "idx"], ["g"], axis=1),
        helper.make_node("Slice", ["g", "st", "en", "axs", "stp"], ["y"]),
    ]
    inits = [init("idx", np.asarray([[-1, 0], [2, 1]], np.int64)), init("st", np.asarray([-1], np.int64)),
             init("en", np.asarray([-100], np.int64)), init("axs", np.asarray([3], np.int64)),
             init("stp", np.asarray([-2], np.int64))]
    assert_matches_ort(make_model(nodes, [2, 3, 5], initializers=inits), rand(2, 3, 5))


@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_mean_and_friends(opset: int) -> None:
    if opset < 18:
        nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=1),
                 helper.make_node("ReduceMax", ["x"], ["mx"], axes=[-3], keepdims=1)]
        inits = [init("axes", np.asarray([3], np.int64))]
    else:
        nodes = [helper.make_node("ReduceMean", ["x", "axes23"], ["m"], keepdims=1),
                 helper.make_node("ReduceMax", ["x", "one"], ["mx"], keepdims=1)]
        inits = [init("axes", np.asarray([3], np.int64)), init("axes23", np.asarray([2, 3], np.int64)),
                 init("one", np.asarray([-3], np.int64))]
    nodes += [helper.make_node("ReduceSum", ["mx", "axes"], ["s"], keepdims=1),
              helper.make_node("Add", ["m", "s"], ["a"]),
              helper.make_node("ReduceMin", ["a"], ["y"], keepdims=0)]
    assert_matches_ort(make_model(nodes, [2, 3, 4, 5], initializers=inits, opset=opset), rand(2, 3, 4, 5))


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split(opset: int) -> None:
    outs = ["a", "b", "c"]
    if opset < 13:
        split = helper.make_node("Split", ["x"], outs, axis=1, split=[1, 2, 3])
        inits = []
    elif opset < 18:
        split = helper.make_node("Split", ["x", "sizes"], outs, axis=1)
        inits = [init("sizes", np.asarray([1, 2, 3], np.int64))]
    else:
        split = helper.make_node("Split", ["x"], outs, axis=1, num_outputs=3)
        inits = []
    nodes = [split, helper.make_node("Concat", ["c", "a", "b"], ["y"], axis=1)]
    assert_matches_ort(make_model(nodes, [2, 6, 3], initializers=inits, opset=opset), rand(2, 6, 3))


@pytest.mark.parametrize(
    "opset, attrs",
    [
        (11, {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}),
        (13, {}),
        (13, {"coordinate_transformation_mode": "align_corners", "nearest_mode": "round_prefer_ceil"}),
        (19, {"coordinate_transformation_mode": "half_pixel_symmetric"}),
    ],
)
def test_resize_nearest(opset: int, attrs: dict) -> None:
    # roi is a required (possibly empty) input in opsets 11 and 12
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode="nearest", **attrs)
    inits = [init("roi", np.zeros(0, np.float32)), init("scales", np.asarray([1, 1, 2, 1.5], np.float32))]
    assert_matches_ort(make_model([node], [2, 3, 4, 6], initializers=inits, opset=opset), rand(2, 3, 4, 6))


def test_resize_sizes_and_upsample() -> None:
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest")
    inits = [init("sizes", np.asarray([2, 3, 7, 3], np.int64))]
    assert_matches_ort(make_model([node], [2, 3, 4, 6], initializers=inits, opset=13), rand(2, 3, 4, 6))
    up = helper.make_node("Upsample", ["x", "scales"], ["y"], mode="nearest")
    inits = [init("scales", np.asarray([1, 1, 2, 3], np.float32))]
    assert_matches_ort(make_model([up], [2, 3, 4, 6], initializers=inits, opset=9), rand(2, 3, 4, 6))


def test_constant_of_shape_and_expand() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("ConstantOfShape", ["s"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("Expand", ["b", "s"], ["e"]),
        helper.make_node("Add", ["ones", "e"], ["a"]),
        helper.make_node("Mul", ["a", "x"], ["y"]),
    ]
    assert_matches_ort(make_model(nodes, [2, 3, 4], initializers=[init("b", rand(3, 1))]), rand(2, 3, 4))


# ---------------------------------------------------------------------------------------------
# Whole models
# ---------------------------------------------------------------------------------------------


def test_nhwc_input_softmax_output_exposes_logits() -> None:
    model = tiny_cnn(classes=5, channels=3, nhwc=True)
    x = rand(3, 8, 8, 3)
    assert_matches_ort(model, x)
    module = OnnxModule(model).eval()
    assert module.ends_in_softmax and module.logits_name == "logits"
    with torch.no_grad():
        z = module.logits(torch.from_numpy(x))
        probs = module(torch.from_numpy(x))
    assert z.shape == (3, 5)
    torch.testing.assert_close(torch.softmax(z, 1), probs)


def test_taps_return_intermediate_tensors() -> None:
    module = OnnxModule(tiny_cnn()).eval()
    out, taps = module(torch.from_numpy(rand(2, 1, 8, 8)), taps=["r1", "r2"])
    assert out.shape == (2, 4)
    assert taps["r1"].shape == (2, 8, 8, 8) and taps["r2"].shape == (2, 8, 4, 4)
    with pytest.raises(KeyError, match="nope"):
        module(torch.from_numpy(rand(1, 1, 8, 8)), taps=["nope"])


@pytest.mark.realdata
@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_models_match_onnxruntime(name: str) -> None:
    path = realdata_path("models", name)
    model = onnx.load(str(path))
    ref_path = path.with_suffix(".ref_io.npz")
    session = make_session(model)
    in_name = session.get_inputs()[0].name
    fixed_batch = session.get_inputs()[0].shape[0] == 1
    if ref_path.exists():
        ref = np.load(ref_path)
        x, expected = ref["input"], ref["output_ref"]
    else:  # no reference data: compare with onnxruntime on random inputs of the right shape
        shape = [d if isinstance(d, int) else 2 for d in session.get_inputs()[0].shape]
        x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
        expected = session.run(None, {in_name: x})[0]
    module = OnnxModule(model).eval()
    with torch.no_grad():
        if fixed_batch:
            got = np.concatenate([module(torch.from_numpy(x[i : i + 1])).numpy() for i in range(len(x))])
        else:
            got = module(torch.from_numpy(x)).numpy()
    got = got.reshape(expected.shape)
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(got - expected).max() <= 1e-4 * scale


@pytest.mark.realdata
@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_models_write_back_is_identity(name: str) -> None:
    model = onnx.load(str(realdata_path("models", name)))
    out = OnnxModule(model).write_back(model)
    assert [t.SerializeToString() for t in out.graph.initializer] == [
        t.SerializeToString() for t in model.graph.initializer
    ]
    assert out.SerializeToString() == model.SerializeToString()
    # with BatchNorm re-inserted after the folded convs, folding back untrained is exact too
    x = np.random.default_rng(0).uniform(0, 1, (4,) + InputSpec.from_model(model).sample_shape).astype(np.float32)
    bn_module = to_torch(model, bn_calibration=[x])
    # mnist8's convs carry no bias (a separate Add follows): nothing was folded there
    assert (len(bn_module.inserted_bn) > 0) != name.startswith("mnist8")
    assert bn_module.write_back(model).SerializeToString() == model.SerializeToString()


# ---------------------------------------------------------------------------------------------
# Parameters, write-back, errors
# ---------------------------------------------------------------------------------------------


def test_parameter_names_are_safe_and_mapped() -> None:
    model = tiny_cnn()
    module = OnnxModule(model)
    assert set(module.param_names) == {f"{layer}.{kind}" for layer in ("conv1", "conv2", "fc") for kind in ("weight", "bias")}
    for onnx_name, key in module.param_names.items():
        assert "." not in key and module.params[key] is module.initializer(onnx_name)
        assert module.onnx_names[key] == onnx_name


def test_write_back_after_training_step_matches_onnxruntime() -> None:
    model = tiny_cnn(softmax=False)
    module = OnnxModule(model).train()
    x = torch.from_numpy(rand(4, 1, 8, 8))
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    module(x).pow(2).mean().backward()
    opt.step()
    trained = module.write_back(model)
    changed = [a.name for a, b in zip(model.graph.initializer, trained.graph.initializer) if a.raw_data != b.raw_data]
    assert set(changed) == set(module.param_names)
    module.eval()
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), ort_run(trained, x.numpy()), atol=1e-5)
    assert model.graph.initializer[0].SerializeToString() != trained.graph.initializer[0].SerializeToString()


def test_fp16_initializers_stay_fp16() -> None:
    w16 = rand(4, 2, 3, 3).astype(np.float16)
    nodes = [helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT),
             helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [1, 2, 5, 5], initializers=[init("w16", w16)])
    module = OnnxModule(model)
    assert "w16" in module.param_names and module.params[module.param_names["w16"]].dtype == torch.float32
    assert module.write_back(model).SerializeToString() == model.SerializeToString()
    with torch.no_grad():
        module.params[module.param_names["w16"]].add_(0.5)
    out = module.write_back(model)
    assert out.graph.initializer[0].data_type == TensorProto.FLOAT16
    expected = (w16.astype(np.float32) + 0.5).astype(np.float16)
    np.testing.assert_array_equal(numpy_helper.to_array(out.graph.initializer[0]), expected)


def test_unsupported_op_names_op_and_node() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="ok"),
             helper.make_node("LpNormalization", ["r"], ["y"], name="the_culprit")]
    with pytest.raises(UnsupportedOpError, match=r"LpNormalization.*the_culprit"):
        OnnxModule(make_model(nodes, [2, 3]))


def test_unsupported_attribute_names_node() -> None:
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", name="up")
    scales = init("scales", np.asarray([1, 1, 2, 2], np.float32))
    module = OnnxModule(make_model([node], [1, 1, 2, 2], initializers=[scales]))
    with pytest.raises(UnsupportedOpError, match=r"Resize mode=linear.*'up'"):
        module(torch.zeros(1, 1, 2, 2))


def test_maxpool_indices_output_is_refused() -> None:
    node = helper.make_node("MaxPool", ["x"], ["p", "idx"], kernel_shape=[2, 2], name="mp")
    graph_nodes = [node, helper.make_node("Cast", ["idx"], ["y"], to=TensorProto.FLOAT)]
    with pytest.raises(UnsupportedOpError, match="Indices.*'mp'"):
        OnnxModule(make_model(graph_nodes, [1, 1, 4, 4]))


# ---------------------------------------------------------------------------------------------
# BatchNorm: re-insertion for folded BN, explicit BN training, recalibration
# ---------------------------------------------------------------------------------------------


def test_reinserted_bn_is_identity_before_training() -> None:
    model = tiny_cnn(softmax=False)
    batches = [rand(16, 1, 8, 8) for _ in range(3)]
    module = to_torch(model, bn_calibration=batches)
    assert [c.name for c in module.folded_bn_candidates()] == ["conv1", "conv2"]
    assert len(module.inserted_bn) == 2
    module.eval()
    x = rand(5, 1, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), ort_run(model, x), atol=1e-5)
    out = module.write_back(model)
    assert out.SerializeToString() == model.SerializeToString()  # folding back is exact
    # train mode normalises with batch statistics: close to eval on the calibration data
    module.train()
    bn = next(iter(module.inserted_bn.values()))
    np.testing.assert_allclose(bn.weight.detach().numpy() ** 2, bn.running_var.numpy() + bn.eps, rtol=1e-5)


def test_reinserted_bn_folds_trained_values() -> None:
    model = tiny_cnn(softmax=False)
    module = to_torch(model, bn_calibration=[rand(16, 1, 8, 8)])
    module.train()
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        module(torch.from_numpy(rand(8, 1, 8, 8))).pow(2).mean().backward()
        opt.step()
    module.eval()
    folded = module.write_back(model)
    assert len(folded.graph.node) == len(model.graph.node)
    x = rand(4, 1, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(ort_run(folded, x), module(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_explicit_bn_trains_running_stats() -> None:
    model = tiny_cnn(bn=True, softmax=False)
    module = to_torch(model, bn_calibration=[rand(8, 1, 8, 8)])
    assert [c.name for c in module.folded_bn_candidates()] == ["conv2"]  # conv1 feeds a real BN
    module.train()
    with torch.no_grad():
        module(torch.from_numpy(rand(8, 1, 8, 8) + 3.0))
    out = module.write_back(model)
    mean = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "bn.mean"))
    assert np.abs(mean).max() > 0  # moved from its initial zeros


def test_recalibrate_bn_sets_exact_pooled_statistics() -> None:
    model = tiny_cnn(bn=True, softmax=False)
    batches = [rand(6, 1, 8, 8) * 2 + 1 for _ in range(3)]
    out = recalibrate_bn(model, batches)
    module = OnnxModule(model).eval()
    with torch.no_grad():
        c1 = np.concatenate([module(torch.from_numpy(b), taps=["c1"])[1]["c1"].numpy() for b in batches])
    values = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    np.testing.assert_allclose(values["bn.mean"], c1.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(values["bn.var"], c1.var(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    original = {t.name: t.SerializeToString() for t in model.graph.initializer}
    untouched = [t for t in out.graph.initializer if t.name not in ("bn.mean", "bn.var")]
    assert all(t.SerializeToString() == original[t.name] for t in untouched)


def test_recalibrate_bn_without_bn_is_a_copy() -> None:
    model = tiny_cnn()
    assert recalibrate_bn(model, [rand(2, 1, 8, 8)]).SerializeToString() == model.SerializeToString()
