"""The preprocessing probe: a model run with the wrong input convention is caught on a few
labelled images and the right flags are named; a right one gives no note."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx

from onnxcompress.compiler.data import Preprocess
from onnxcompress.compiler.preprocess_probe import suggest
from onnxcompress.compiler.runtime import make_session
from tests.builders import resnet_like
from tests.conftest import realdata_path


def test_the_mlperf_resnet8_needs_raw_pixels():
    model = onnx.load(str(realdata_path("models", "cifar10_resnet8_mlperftiny_tf2onnx.onnx")))
    data = realdata_path("data", "cifar10_test_jpeg.npz")
    note = suggest(model, data, Preprocess())
    assert note is not None and "with --scale 1:" in note and "x/255 (the default)" in note
    assert suggest(model, data, Preprocess(scale=1.0)) is None


def test_the_caffe_squeezenet_needs_bgr_means():
    model = onnx.load(str(realdata_path("models", "imagenet_squeezenet1.1_fp32_from_winml_fp16.onnx")))
    note = suggest(model, realdata_path("data", "imagenet_samples20_224.npz"), Preprocess())
    assert note is not None and "--scale 1 --mean 104,117,123 --bgr" in note


def _raw_pixel_model(tmp_path):
    """A model whose labels were made from raw 0..255 inputs."""
    model = resnet_like(width=8, blocks=1, seed=4)
    x = np.random.default_rng(0).integers(0, 255, (300, 8, 8, 3), dtype=np.uint8)
    s = make_session(model)
    y = s.run(None, {"x": x.astype(np.float32).transpose(0, 3, 1, 2)})[0].argmax(1)
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.savez(tmp_path / "floats.npz", x=x.astype(np.float32).transpose(0, 3, 1, 2), y=y)
    np.savez(tmp_path / "unlabelled.npz", x=x)
    return model


def test_notes_only_where_they_can_help(tmp_path):
    model = _raw_pixel_model(tmp_path)
    assert "with --scale 1:" in suggest(model, tmp_path / "d.npz", Preprocess())
    assert suggest(model, tmp_path / "d.npz", Preprocess(scale=1.0)) is None
    assert suggest(model, tmp_path / "floats.npz", Preprocess()) is None  # already preprocessed
    assert suggest(model, tmp_path / "unlabelled.npz", Preprocess()) is None  # nothing to score


def test_eval_prints_the_note_unless_flags_were_given(tmp_path):
    _raw_pixel_model(tmp_path)

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "onnxcompress", "eval", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), *extra],
                              capture_output=True, text=True, timeout=300)

    r = run()
    assert r.returncode == 0 and "it probably expects that preprocessing (rerun with those flags)" in r.stderr, r.stderr
    r = run("--scale", "1")
    assert r.returncode == 0 and "note:" not in r.stderr and "top-1 100.00%" in r.stdout, r.stdout + r.stderr
