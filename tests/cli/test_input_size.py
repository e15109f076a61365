"""Models exported with a dynamic height/width (PyTorch dynamic_axes on H and W, fully
convolutional Keras models): every command pins the input to --input-size, else to the size of
the .npz images, and the student keeps that fixed size."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from onnxcompress.compiler.data import InputSpec, dynamic_spatial, image_size_of, pin_input_size
from onnxcompress.compiler.runtime import make_session
from onnxcompress.errors import ModelError
from tests.builders import resnet_like


def dynamic(model: onnx.ModelProto, axes=(2, 3)) -> onnx.ModelProto:
    """The same model with symbolic input dims on `axes` (like an export with dynamic_axes)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for axis, name in zip(axes, ("H", "W")):
        dims[axis].Clear()
        dims[axis].dim_param = name
    del m.graph.value_info[:]
    onnx.checker.check_model(m)
    return m


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxcompress", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dyn")
    (d / "dyn.onnx").write_bytes(dynamic(resnet_like(width=16, blocks=1)).SerializeToString())
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", x=rng.integers(0, 255, (64, 12, 10, 3), dtype=np.uint8), y=rng.integers(0, 10, 64))
    (d / "plan.json").write_text('{"passes": [{"pass": "prune_channels", "ratio": 0.5}]}')
    return d


def test_pinning_is_lossless_and_fixes_only_the_symbolic_dims():
    model = dynamic(resnet_like(width=8, blocks=1))
    assert dynamic_spatial(model)
    pinned = pin_input_size(model, 12, 10)
    assert not dynamic_spatial(pinned) and dynamic_spatial(model)  # a copy: the input model is untouched
    spec = InputSpec.from_model(pinned)
    assert (spec.height, spec.width, spec.channels, spec.batch) == (12, 10, 3, "N")
    x = np.random.default_rng(1).standard_normal((5, 3, 12, 10)).astype(np.float32)
    a = make_session(model).run(None, {"x": x})[0]
    b = make_session(pinned).run(None, {"x": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # onnxruntime may pick other kernels for known sizes


def test_a_size_that_contradicts_a_fixed_dimension_is_refused():
    fixed = resnet_like(width=8, blocks=1)  # 8x8
    assert pin_input_size(fixed, 8, 8).graph.input[0] == fixed.graph.input[0]
    with pytest.raises(ModelError, match="fixed height of 8, not 9"):
        pin_input_size(fixed, 9, 8)
    only_width = dynamic(fixed, axes=(3,))
    with pytest.raises(ModelError, match="fixed height"):
        pin_input_size(only_width, 16, 16)
    assert InputSpec.from_model(pin_input_size(only_width, 8, 20)).width == 20


def test_image_size_is_read_from_the_npz_header(tmp_path):
    np.savez(tmp_path / "rgb.npz", x=np.zeros((4, 20, 30, 3), np.uint8))
    np.savez(tmp_path / "grey.npz", x=np.zeros((4, 28, 27), np.uint8))
    np.savez_compressed(tmp_path / "float_nchw.npz", x=np.zeros((2, 3, 16, 18), np.float32))
    np.savez(tmp_path / "labels_only.npz", y=np.zeros(3))
    assert image_size_of(tmp_path / "rgb.npz", "NCHW") == (20, 30)
    assert image_size_of(tmp_path / "grey.npz", "NCHW") == (28, 27)
    assert image_size_of(tmp_path / "float_nchw.npz", "NCHW") == (16, 18)
    assert image_size_of(tmp_path / "float_nchw.npz", "NHWC") == (3, 16)  # float arrays are in the model's layout
    assert image_size_of(tmp_path / "labels_only.npz", "NCHW") is None
    assert image_size_of(tmp_path, "NCHW") is None  # an image folder: no single size


@pytest.mark.slow
def test_apply_and_eval_pin_to_the_data_size(files):
    out = files / "student.onnx"
    r = cli("apply", str(files / "dyn.onnx"), str(files / "plan.json"), "-o", str(out), "--data", str(files / "data.npz"))
    assert r.returncode == 0, r.stderr
    assert "dynamic input height/width; using 12x10" in r.stderr
    spec = InputSpec.from_model(onnx.load(str(out)))
    assert (spec.height, spec.width) == (12, 10)
    r = cli("eval", str(out), "--data", str(files / "data.npz"), "--teacher", str(files / "dyn.onnx"), "--json")
    assert r.returncode == 0, r.stderr
    assert '"agreement"' in r.stdout


def test_input_size_flag_sets_the_size_the_costs_are_measured_at(files):
    small = cli("inspect", str(files / "dyn.onnx"), "--input-size", "8x8", "--json")
    large = cli("inspect", str(files / "dyn.onnx"), "--input-size", "16", "--json")
    assert small.returncode == 0 and large.returncode == 0, small.stderr + large.stderr
    import json

    macs = [json.loads(r.stdout)["macs"] for r in (small, large)]
    assert 3.95 < macs[1] / macs[0] < 4.0  # convolutions scale with the pixel count, the head does not


def test_no_size_anywhere_is_one_clear_line(files):
    out = files / "none.onnx"
    r = cli("apply", str(files / "dyn.onnx"), str(files / "plan.json"), "-o", str(out))
    assert r.returncode != 0 and not out.exists()
    assert r.stderr.strip().splitlines() == ["error: dyn.onnx has a dynamic input height/width; give --input-size HxW (input_size= in Python), the size it will run at"]
    r = cli("inspect", str(files / "dyn.onnx"), "--input-size", "0x4")
    assert r.returncode == 2 and "expected HEIGHTxWIDTH" in r.stderr and "Traceback" not in r.stderr


def test_output_into_a_closed_pipe_stops_quietly(files):
    # `onnxcompress inspect m.onnx | head -1`: the reader leaves; no "internal error"
    p = subprocess.Popen([sys.executable, "-m", "onnxcompress", "inspect", str(files / "dyn.onnx"), "--input-size", "8x8"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    p.wait(timeout=120)
    assert "internal error" not in err and "Traceback" not in err, err
    assert p.returncode in (0, 141)


@pytest.mark.slow
def test_compress_and_finetune_a_dynamic_teacher(files):
    out = files / "c.onnx"
    r = cli(str(files / "dyn.onnx"), "--data", str(files / "data.npz"), "--target", "macs=0.5", "--agent", "random",
            "--episodes", "2", "--finetune-epochs", "1", "--families", "1", "--quiet", "-o", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    spec = InputSpec.from_model(onnx.load(str(out)))
    assert (spec.height, spec.width) == (12, 10)
    tuned = files / "t.onnx"
    r = cli("finetune", str(out), "--teacher", str(files / "dyn.onnx"), "--data", str(files / "data.npz"), "--epochs", "1",
            "--quiet", "-o", str(tuned))
    assert r.returncode == 0, r.stderr[-2000:]
    assert onnx.load(str(tuned)).graph.input[0] == onnx.load(str(out)).graph.input[0]


def test_a_channels_last_tf2onnx_model_with_dynamic_size_is_pinned_on_its_height_and_width():
    from tests.conftest import realdata_path

    model = onnx.load(str(realdata_path("models", "cifar10_resnet8_mlperftiny_tf2onnx.onnx")))  # [N, 32, 32, 3] + Transpose
    ref = np.load(realdata_path("models", "cifar10_resnet8_mlperftiny_tf2onnx.ref_io.npz"))
    dyn = dynamic(model, axes=(1, 2))
    assert dynamic_spatial(dyn)
    pinned = pin_input_size(dyn, 32, 32)
    assert [d.dim_value for d in pinned.graph.input[0].type.tensor_type.shape.dim][1:] == [32, 32, 3]
    out = make_session(pinned).run(None, {"input": ref["input"]})[0]
    np.testing.assert_allclose(out, ref["output_ref"], rtol=1e-4, atol=1e-5)


def test_python_api_pins_too(files):
    import onnxcompress

    model = files / "dyn.onnx"
    assert onnxcompress.inspect(model, input_size=(16, 16))["inputs"][0]["shape"][2:] == [16, 16]
    student = onnxcompress.apply(model, files / "plan.json", data=files / "data.npz")  # the data's 12x10
    assert (InputSpec.from_model(student).height, InputSpec.from_model(student).width) == (12, 10)
    assert onnxcompress.evaluate(model, files / "data.npz").samples == 64
    with pytest.raises(ModelError, match="input_size= in Python"):
        onnxcompress.load(model)
