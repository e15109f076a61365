"""Binary classifiers with one output score (Keras Dense(1, sigmoid), PyTorch Linear(C, 1) +
Sigmoid, or the bare logit) are compressed as two classes [0, z] and written back with the user's
single score: compiler/binary_head.py, wired into every command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.compiler.binary_head import is_single_score, restore_single_score, two_class_view
from onnxcompress.compiler.onnx_io import canonicalize
from onnxcompress.compiler.runtime import make_session
from onnxcompress.errors import ModelError
from onnxcompress.passes import Plan, apply_plan
from tests.builders import GraphBuilder

X = np.random.default_rng(0).uniform(0, 1, (64, 3, 8, 8)).astype(np.float32)


def as_input(x: np.ndarray) -> np.ndarray:
    """uint8 NHWC images preprocessed as the commands do (x/255, NCHW)."""
    from onnxcompress.compiler.data import InputSpec, Preprocess, images_to_input

    return images_to_input(x, InputSpec("x", "NCHW", 3, x.shape[1], x.shape[2]), Preprocess())


def run(model: onnx.ModelProto, x: np.ndarray = X) -> np.ndarray:
    s = make_session(model)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def binary(head: str = "gemm", sigmoid: bool = True, seed: int = 0) -> onnx.ModelProto:
    """conv -> relu -> GAP -> flatten -> (Gemm | MatMul + Add | MatMul | 1x1 conv) -> [Sigmoid],
    with the bias set so that about half the samples score above 0.5."""
    g = GraphBuilder(seed=seed)
    x = g.relu(g.conv(g.relu(g.conv("x", 3, 8)), 8, 8))
    w = (g.rng.standard_normal((1, 8)) * 0.5).astype(np.float32)
    if head == "conv":
        z = g.node("Flatten", [g.node("GlobalAveragePool", [g.conv(x, 8, 1, k=1, pads=[0, 0, 0, 0])])], axis=1)
    else:
        f = g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1)
        if head == "gemm":
            z = g.node("Gemm", [f, g.const(w), g.const(np.zeros(1, np.float32), "b")], transB=1)
        elif head == "matmul_add":
            z = g.node("Add", [g.node("MatMul", [f, g.const(w.T.copy())]), g.const(np.zeros(1, np.float32), "b")])
        else:
            z = g.node("MatMul", [f, g.const(w.T.copy())])
    model = g.build(g.node("Sigmoid", [z]) if sigmoid else z)
    if head in ("gemm", "matmul_add"):  # centre the logits: half the samples on each side
        scores = run(model)[:, 0]
        centre = np.median(np.log(scores / (1 - scores)) if sigmoid else scores)
        bias = next(i for i in model.graph.initializer if numpy_helper.to_array(i).shape == (1,))
        bias.CopyFrom(numpy_helper.from_array(np.array([-centre], np.float32), bias.name))
    return model


@pytest.mark.parametrize("head,sigmoid", [("gemm", True), ("matmul_add", True), ("gemm", False), ("matmul", True)])
def test_two_class_view_is_exact_and_restores_the_interface(head, sigmoid):
    model = binary(head, sigmoid)
    assert is_single_score(model)
    p = run(model)[:, 0]
    view = two_class_view(model)
    logits = run(view)
    assert logits.shape == (64, 2) and not is_single_score(view)
    soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(soft[:, 1], p if sigmoid else 1 / (1 + np.exp(-p)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(logits.argmax(1), (p > (0.5 if sigmoid else 0.0)).astype(int))
    back = restore_single_score(canonicalize(view))
    assert [d.dim_value for d in back.graph.output[0].type.tensor_type.shape.dim][1:] == [1]
    assert back.graph.output[0].name == model.graph.output[0].name
    np.testing.assert_allclose(run(back)[:, 0], p, rtol=1e-5, atol=1e-6)
    assert restore_single_score(model) is model  # nothing to restore on a model that is not a view


def test_trained_logits_restore_as_their_difference():
    view = canonicalize(two_class_view(binary()))
    gemm = next(n for n in view.graph.node if n.op_type == "Gemm")
    for name in gemm.input[1:]:  # fine-tuning moves the zero row too
        init = next(i for i in view.graph.initializer if i.name == name)
        a = numpy_helper.to_array(init).copy()
        a.reshape(-1)[0] += 0.3
        init.CopyFrom(numpy_helper.from_array(a, name))
    logits = run(view)
    expected = 1 / (1 + np.exp(-(logits[:, 1] - logits[:, 0])))
    np.testing.assert_allclose(run(restore_single_score(view))[:, 0], expected, rtol=1e-5, atol=1e-6)


def test_quantized_and_pruned_students_keep_the_single_score():
    model = binary()
    view = canonicalize(two_class_view(model))
    student = apply_plan(view, Plan.from_json({"passes": [{"pass": "prune_channels", "ratio": 0.5}, {"pass": "quantize", "bits": 8}]}), calibration=X)
    back = restore_single_score(student)
    out = run(back)
    assert out.shape == (64, 1) and ((out > 0) & (out < 1)).all()
    assert any(n.name.endswith("_to_single_score") for n in back.graph.node)  # a QDQ head: difference appended


def test_an_unsupported_single_score_head_is_one_clear_error():
    with pytest.raises(ModelError, match="cannot widen to two classes"):
        two_class_view(binary("conv"))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxcompress", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_commands_on_a_sigmoid_classifier(tmp_path):
    teacher = binary(seed=3)
    (tmp_path / "t.onnx").write_bytes(teacher.SerializeToString())
    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, (200, 8, 8, 3), dtype=np.uint8)
    p = run(teacher, as_input(x))[:, 0]  # exactly the inputs the commands feed
    y = (p > 0.5).astype(np.int64)
    y[:20] = 1 - y[:20]  # 90 % of the labels agree with the teacher
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = cli("eval", str(tmp_path / "t.onnx"), "--data", str(tmp_path / "d.npz"))
    assert r.returncode == 0 and "top-1 90.00% on 200 samples" in r.stdout, r.stdout + r.stderr
    out = tmp_path / "s.onnx"
    r = cli(str(tmp_path / "t.onnx"), "--data", str(tmp_path / "d.npz"), "--target", "macs=0.5", "--agent", "random",
            "--episodes", "2", "--finetune-epochs", "1", "--families", "1", "--quiet", "-o", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    student = onnx.load(str(out))
    assert [d.dim_value for d in student.graph.output[0].type.tensor_type.shape.dim][1:] == [1]
    assert student.graph.node[-1].op_type == "Sigmoid" and not any(m.key == "onnxcompress.binary_head" for m in student.metadata_props)
    tuned = tmp_path / "f.onnx"
    r = cli("finetune", str(out), "--teacher", str(tmp_path / "t.onnx"), "--data", str(tmp_path / "d.npz"), "--epochs", "1", "--quiet", "-o", str(tuned))
    assert r.returncode == 0, r.stderr[-2000:]
    s = run(onnx.load(str(tuned)), as_input(x))
    assert s.shape == (200, 1) and ((s > 0) & (s < 1)).all()
    r = cli("eval", str(tuned), "--data", str(tmp_path / "d.npz"), "--teacher", str(tmp_path / "t.onnx"))
    assert r.returncode == 0 and "agreement with teacher" in r.stdout, r.stderr


@pytest.mark.slow
def test_classes_option_on_a_single_score_model_is_refused(tmp_path):
    (tmp_path / "t.onnx").write_bytes(binary().SerializeToString())
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 8, 8, 3), np.uint8), y=np.array([0, 1] * 4))
    out = tmp_path / "s.onnx"
    r = cli(str(tmp_path / "t.onnx"), "--data", str(tmp_path / "d.npz"), "--target", "macs=0.5", "--classes", "1", "-o", str(out))
    assert r.returncode == 2 and not out.exists()
    assert r.stderr.strip().splitlines() == ["error: --classes does not apply to a binary classifier with a single score (it has no classes to keep)"]


@pytest.mark.slow
def test_python_api_keeps_the_single_score(tmp_path):
    import onnxcompress

    teacher = binary(seed=5)
    path = tmp_path / "t.onnx"
    path.write_bytes(teacher.SerializeToString())
    x = np.random.default_rng(2).integers(0, 255, (120, 8, 8, 3), dtype=np.uint8)
    p = run(teacher, as_input(x))[:, 0]  # exactly the inputs the commands feed
    np.savez(tmp_path / "d.npz", x=x, y=(p > 0.5).astype(np.int64))
    assert onnxcompress.evaluate(path, tmp_path / "d.npz").accuracy == 1.0
    assert onnxcompress.inspect(path)["binary_head"] == "sigmoid"
    student = onnxcompress.apply(path, {"passes": [{"pass": "prune_channels", "ratio": 0.5}]}, data=tmp_path / "d.npz")
    assert is_single_score(student)
    tuned, _ = onnxcompress.finetune(student, path, tmp_path / "d.npz", epochs=1, progress=False)
    assert is_single_score(tuned)
    result = onnxcompress.compress(path, tmp_path / "d.npz", target="macs=0.5", agent="random", episodes=2, finetune_epochs=1,
                                   families=1, progress=False)
    assert is_single_score(result.model) and result.model.graph.node[-1].op_type == "Sigmoid"
    assert run(result.model).shape == (64, 1)
