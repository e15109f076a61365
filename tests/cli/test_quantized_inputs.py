"""A model that is already quantized (QDQ, e.g. what `apply` with a quantize plan writes) is
inspected as it is, and every command that needs float weights says so in one line instead of
silently doing nothing (prune on a QDQ graph used to write an unchanged model) or failing deep in
the bridge."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from onnxcompress.compiler.onnx_io import canonicalize
from onnxcompress.errors import PlanError
from onnxcompress.passes import Plan, apply_plan
from tests.builders import resnet_like


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxcompress", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("qdq")
    teacher = resnet_like(width=16, blocks=1)
    (d / "float.onnx").write_bytes(teacher.SerializeToString())
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (64, 8, 8, 3), dtype=np.uint8)
    np.savez(d / "data.npz", x=x, y=rng.integers(0, 10, 64))
    calib = (x[:32].astype(np.float32) / 255).transpose(0, 3, 1, 2)
    for bits in (8, 4):
        q = apply_plan(canonicalize(teacher), Plan.from_json({"passes": [{"pass": "quantize", "bits": bits}]}), calibration=calib)
        (d / f"int{bits}.onnx").write_bytes(q.SerializeToString())
    (d / "prune.json").write_text('{"passes": [{"pass": "prune_channels", "ratio": 0.5}]}')
    (d / "q_then_prune.json").write_text('{"passes": [{"pass": "quantize", "bits": 8}, {"pass": "prune_channels", "ratio": 0.5}]}')
    return d


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4])
def test_inspect_reports_the_stored_weight_types(files, bits):
    r = cli("inspect", str(files / f"int{bits}.onnx"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["quantized_weights"] == {f"int{bits}": 4}  # 3 convs + the Gemm head
    assert json.loads(cli("inspect", str(files / "float.onnx"), "--json").stdout)["quantized_weights"] is None
    text = cli("inspect", str(files / f"int{bits}.onnx")).stdout
    assert f"weights stored as 4 int{bits}" in text and "unknown op" not in text


@pytest.mark.slow
def test_structural_passes_refuse_a_quantized_model(files):
    out = files / "out.onnx"
    r = cli("apply", str(files / "int8.onnx"), str(files / "prune.json"), "-o", str(out), "--data", str(files / "data.npz"))
    assert r.returncode != 0 and not out.exists()
    assert r.stderr.strip().splitlines() == ["error: pass 'prune_channels' cannot run on a quantized (QDQ) model: channel, layer and "
                                             "class rewrites need float weights; start from the float model and put quantize last in the plan"]
    r = cli("apply", str(files / "float.onnx"), str(files / "q_then_prune.json"), "-o", str(out), "--data", str(files / "data.npz"))
    assert r.returncode != 0 and not out.exists() and "cannot run after quantize" in r.stderr
    with pytest.raises(PlanError, match="put quantize last"):
        apply_plan(canonicalize(resnet_like()), Plan.from_json({"passes": [{"pass": "quantize", "bits": 8}, {"pass": "subset_classes", "classes": [1]}]}),
                   calibration=np.zeros((4, 3, 8, 8), np.float32))


@pytest.mark.slow
def test_compress_and_finetune_need_float_models(files):
    out = files / "s.onnx"
    r = cli(str(files / "int8.onnx"), "--data", str(files / "data.npz"), "--target", "macs=0.5", "-o", str(out), "--quiet")
    assert r.returncode != 0 and not out.exists() and len(r.stderr.strip().splitlines()) == 1
    assert "int8.onnx is already quantized" in r.stderr
    for student, teacher in (("int8.onnx", "float.onnx"), ("float.onnx", "int8.onnx")):
        r = cli("finetune", str(files / student), "--teacher", str(files / teacher), "--data", str(files / "data.npz"), "-o", str(out), "--quiet")
        assert r.returncode != 0 and not out.exists(), r.stderr
        assert "is quantized (QuantizeLinear/DequantizeLinear): fine-tuning needs float models" in r.stderr
