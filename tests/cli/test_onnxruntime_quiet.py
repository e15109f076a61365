"""onnxruntime's own optimiser warnings (`[W:onnxruntime:, unsqueeze_elimination.cc ...]`) never
reach the user's stderr: only our one-line messages do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from onnxcompress.compiler import runtime
from onnxcompress.compiler.onnx_io import canonicalize, load_model

from tests.torch_models import ShuffleNet, export


@pytest.fixture(scope="module")
def shufflenet(tmp_path_factory) -> Path:
    # its channel shuffle leaves Unsqueeze nodes of constants that onnxruntime's optimiser warns about
    return export(ShuffleNet(), tmp_path_factory.mktemp("quiet") / "shufflenet.onnx", (3, 16, 16))


def test_the_model_makes_onnxruntime_warn_when_nothing_silences_it(shufflenet: Path, monkeypatch, capfd) -> None:
    # the premise of the test below: with onnxruntime's default severity (warnings) it does warn
    monkeypatch.setattr(runtime, "quiet_onnxruntime", lambda: ort.set_default_logger_severity(2))
    try:
        canonicalize(load_model(shufflenet))
        err = capfd.readouterr().err
    finally:
        ort.set_default_logger_severity(runtime.LOG_ERRORS_ONLY)
    assert "onnxruntime" in err


def test_cli_commands_print_nothing_on_stderr(shufflenet: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"passes": [{"pass": "prune_channels", "ratio": 0.5}]}))
    for args in (["inspect", str(shufflenet)], ["apply", str(shufflenet), str(plan), "-o", str(tmp_path / "out.onnx")]):
        done = subprocess.run([sys.executable, "-m", "onnxcompress", *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stderr == "", done.stderr
