"""Import/canonicalisation/export: lossless on small graphs and on the real models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxcompress.compiler.onnx_io import canonicalize, dynamic_batch, load_model, save_model_atomic
from onnxcompress.compiler.runtime import make_session
from onnxcompress.errors import ModelError
from tests.builders import GraphBuilder, resnet_like
from tests.conftest import REAL_MODELS, realdata_path


def _run(model, x):
    s = make_session(model)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _close(a, b, rel=1e-4):
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= rel * max(1.0, np.abs(a).max())


def test_batchnorm_folded_and_lossless():
    m = resnet_like(bn=True)
    c = canonicalize(m)
    assert not any(n.op_type == "BatchNormalization" for n in c.graph.node)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    _close(_run(m, x), _run(c, x))


def test_batchnorm_kept_when_conv_has_other_consumers():
    g = GraphBuilder()
    c = g.conv("x", 3, 4)
    b = g.bn(c, 4)
    y = g.add(b, c)  # the conv output is also read elsewhere: BN cannot be folded into it
    m = g.build(g.head(y, 4))
    can = canonicalize(m)
    assert sum(n.op_type == "BatchNormalization" for n in can.graph.node) == 1
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    _close(_run(m, x), _run(can, x))


def test_matmul_add_becomes_gemm_and_identity_dropout_removed():
    g = GraphBuilder()
    x = g.relu(g.conv("x", 3, 4))
    x = g.node("Identity", [x])
    x = g.node("Dropout", [x])
    p = g.node("GlobalAveragePool", [x])
    f = g.node("Flatten", [p], axis=1)
    mm = g.node("MatMul", [f, g.const(np.ones((4, 5), np.float32))])
    y = g.node("Add", [mm, g.const(np.arange(5, dtype=np.float32))])
    m = g.build(y)
    c = canonicalize(m)
    ops = [n.op_type for n in c.graph.node]
    assert "Gemm" in ops and "MatMul" not in ops and "Identity" not in ops and "Dropout" not in ops
    xin = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(np.float32)
    _close(_run(m, xin), _run(c, xin))


def test_fixed_batch_becomes_symbolic():
    g = GraphBuilder()
    g.input = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = g.relu(g.conv("x", 3, 4))
    r = g.node("Reshape", [y, g.const(np.array([1, 4 * 64], np.int64), "s")])
    m = g.build(r)
    c = canonicalize(m)
    assert c.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    x = np.random.default_rng(3).standard_normal((5, 3, 8, 8)).astype(np.float32)
    assert _run(c, x).shape == (5, 256)


def test_dynamic_batch_copies_only_fixed_batch_models():
    fixed = resnet_like()
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    before = fixed.SerializeToString()
    d = dynamic_batch(fixed)
    assert fixed.SerializeToString() == before  # the caller's model is untouched
    assert d.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    x = np.random.default_rng(4).standard_normal((6, 3, 8, 8)).astype(np.float32)
    _close(_run(d, x), _run(resnet_like(), x), rel=1e-6)
    dyn = resnet_like()
    assert dynamic_batch(dyn) is dyn


def test_old_opset_upgraded():
    g9 = GraphBuilder(opset=9)
    m9 = g9.build(g9.head(g9.relu(g9.conv("x", 3, 4)), 4, softmax=True))
    c9 = canonicalize(m9)
    assert c9.opset_import[0].version == 13
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    _close(_run(m9, x), _run(c9, x))


def test_fp16_model_widened_to_fp32():
    g = GraphBuilder()
    m = g.build(g.head(g.relu(g.conv("x", 3, 4)), 4))
    m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    for init in m.graph.initializer:
        init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init).astype(np.float16), init.name))
    m.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    del m.graph.value_info[:]
    c = canonicalize(m)
    assert c.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(i.data_type != onnx.TensorProto.FLOAT16 for i in c.graph.initializer)
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    ref = _run(m, x.astype(np.float16)).astype(np.float32)
    _close(ref, _run(c, x), rel=2e-2)


def test_load_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="directory"):
        load_model(tmp_path)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        load_model(empty)
    text = tmp_path / "text.onnx"
    text.write_text("hello, I am not a model\n")
    with pytest.raises(ModelError):
        load_model(text)
    good = resnet_like().SerializeToString()
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError):
        load_model(trunc)


def test_external_data_outside_folder_refused(tmp_path):
    m = resnet_like()
    init = m.graph.initializer[0]
    init.ClearField("raw_data")
    del init.float_data[:]
    init.data_location = onnx.TensorProto.EXTERNAL
    init.external_data.add(key="location", value="../../etc/passwd")
    p = tmp_path / "m.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(ModelError, match="outside"):
        load_model(p)


def test_atomic_save_leaves_no_temp(tmp_path):
    m = resnet_like()
    out = save_model_atomic(m, tmp_path / "a.onnx")
    assert out.exists() and [p.name for p in tmp_path.iterdir()] == ["a.onnx"]
    with pytest.raises(ModelError, match="does not exist"):
        save_model_atomic(m, tmp_path / "nope" / "a.onnx")


@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_models_round_trip(name):
    path = realdata_path("models", name)
    original = load_model(path)
    canonical = canonicalize(original)
    onnx.checker.check_model(canonical)
    ref = path.with_name(path.name.replace(".onnx", ".ref_io.npz"))
    if ref.exists():
        x = np.load(ref)["input"]
    else:
        dims = [d.dim_value or 1 for d in original.graph.input[0].type.tensor_type.shape.dim]
        x = np.random.default_rng(0).random([2] + dims[1:]).astype(np.float32)
    s = make_session(original)
    name_in = s.get_inputs()[0].name
    expect = np.concatenate([s.run(None, {name_in: x[i : i + 1]})[0] for i in range(len(x))])
    got = _run(canonical, x)
    _close(expect.reshape(got.shape), got)


def test_saved_files_get_normal_permissions(tmp_path):
    import os
    import stat

    out = save_model_atomic(resnet_like(), tmp_path / "p.onnx")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_memory_guard_refuses_models_that_cannot_fit(tmp_path, monkeypatch):
    from onnxcompress.compiler import onnx_io
    from onnxcompress.errors import ResourceError

    p = tmp_path / "m.onnx"
    p.write_bytes(resnet_like().SerializeToString())
    monkeypatch.setattr(onnx_io, "available_memory", lambda: 1000)
    with pytest.raises(ResourceError, match="memory"):
        load_model(p)
