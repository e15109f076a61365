"""An interrupted `compress` (SIGTERM at a random moment) leaves no partial output, and
`--resume` reaches the same plan and a byte-identical student as an uninterrupted run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from onnxcompress.compiler.runtime import make_session
from tests.builders import resnet_like


def _args(d, out):
    return [sys.executable, "-m", "onnxcompress", str(d / "teacher.onnx"), "--data", str(d / "train.npz"), "--target", "macs=0.5",
            "--agent", "random", "--episodes", "8", "--finetune-epochs", "2", "--seed", "3", "-o", str(out),
            "--report", str(out.with_suffix(".json")), "--quiet"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    teacher = resnet_like(width=16, blocks=2, seed=1)
    (d / "teacher.onnx").write_bytes(teacher.SerializeToString())
    x = np.random.default_rng(1).integers(0, 255, (500, 8, 8, 3), dtype=np.uint8)
    s = make_session(teacher)
    y = s.run(None, {"x": (x.astype(np.float32) / 255.0).transpose(0, 3, 1, 2)})[0].argmax(1)
    np.savez(d / "train.npz", x=x, y=y)
    return d


@pytest.mark.slow
def test_interrupted_then_resumed_equals_uninterrupted(job):
    ref = job / "ref.onnx"
    t0 = time.perf_counter()
    r = subprocess.run(_args(job, ref), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    full = time.perf_counter() - t0

    out = job / "resumed.onnx"
    rng = random.Random(7)
    interrupts, resume = 0, False
    for attempt in range(3):
        cmd = _args(job, out) + (["--resume"] if resume else [])
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # interrupt the first two runs at a random moment; the third runs to the end
            p.wait(timeout=rng.uniform(0.35, 0.8) * full if attempt < 2 else 900)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=120)
        if p.returncode == 0:
            break
        interrupts += 1
        assert p.returncode == 130, (interrupts, resume, p.stderr.read()[-3000:])
        assert not out.exists()  # no partial output
        assert not list(job.glob(".resumed.onnx.*"))  # no temporary file left either
        resume = True
    else:
        pytest.fail("never finished")
    assert interrupts >= 1
    assert out.read_bytes() == ref.read_bytes()
    a = json.loads(ref.with_suffix(".json").read_text())
    b = json.loads(out.with_suffix(".json").read_text())
    assert a["plan"] == b["plan"] and a["student"]["accuracy"] == b["student"]["accuracy"]
