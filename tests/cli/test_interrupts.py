"""SIGTERM at any moment of a CLI run after the interpreter started (during the imports of torch/onnxruntime, mid-job, or while
the finished process shuts down) ends it with status 0 (done) or 130 (interrupted, one line on
stderr), never a traceback, an "internal error" or a death by signal."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.builders import resnet_like


@pytest.mark.parametrize("delay", [0.3, 0.6, 1.0, 1.5, 2.5])
def test_sigterm_at_any_moment_exits_cleanly(tmp_path, delay):
    model = tmp_path / "m.onnx"
    model.write_bytes(resnet_like(width=8, blocks=1, seed=0).SerializeToString())
    out = tmp_path / "out.onnx"
    plan = tmp_path / "plan.json"
    plan.write_text('{"passes": [{"pass": "prune_channels", "ratio": 0.5}]}')
    p = subprocess.Popen([sys.executable, "-m", "onnxcompress", "apply", str(model), str(plan), "-o", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=120)
    err = p.stderr.read()
    assert p.returncode in (0, 130), (p.returncode, err[-2000:])
    assert "Traceback" not in err and "internal error" not in err, err[-2000:]
    if p.returncode == 130:
        assert err.strip().splitlines()[-1].startswith("interrupted:") and not out.exists()


def test_exit_process_survives_signals_after_the_job():
    # the job is over: a signal during interpreter shutdown must not change the exit status
    script = ("import os, signal\nfrom onnxcompress import interrupts\ninterrupts.install()\ninterrupts.ignore()\n"
              "os.kill(os.getpid(), signal.SIGTERM)\nos.kill(os.getpid(), signal.SIGINT)\ninterrupts.exit_process(130)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 130, r.stderr
