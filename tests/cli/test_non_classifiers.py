"""Models whose output is not class scores (a segmentation map [N, 21, H, W], a detector's
[N, 84, A]): `inspect` and a structural `apply` work; eval, compress and finetune, which read
the output as class scores, refuse them in one line instead of reporting "top-1 0.00 %"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxcompress import api
from onnxcompress.cli import main
from onnxcompress.compiler.data import class_scores_problem
from onnxcompress.compiler.runtime import make_session
from onnxcompress.errors import ModelError

from tests.builders import GraphBuilder
from tests.torch_models import Detector, Segmenter, export

SHAPES = {"segmenter": "[N, 21, 16, 16]", "detector": "[N, 84, 64]"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("nonclassifiers")
    rng = np.random.default_rng(0)
    np.savez(folder / "data.npz", x=rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8), y=rng.integers(0, 10, 24))
    (folder / "plan.json").write_text(json.dumps({"passes": [{"pass": "prune_channels", "ratio": 0.5}]}))
    return {
        "segmenter": export(Segmenter(), folder / "segmenter.onnx", (3, 16, 16)),
        # the exporter declares the flattened output's dims symbolically: found by inference
        "detector": export(Detector(), folder / "detector.onnx", (3, 16, 16)),
        "data": folder / "data.npz",
        "plan": folder / "plan.json",
    }


@pytest.mark.parametrize("kind", ["segmenter", "detector"])
def test_inspect_and_structural_apply_work(models, kind: str, tmp_path: Path, capsys) -> None:
    model = models[kind]
    assert main(["inspect", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] > 0
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    before = make_session(onnx.load(str(model))).run(None, {"x": x})[0]
    for extra in ([], ["--data", str(models["data"])]):  # --data only calibrates
        out = tmp_path / f"pruned{len(extra)}.onnx"
        assert main(["apply", str(model), str(models["plan"]), "-o", str(out), *extra]) == 0
        after = make_session(onnx.load(str(out))).run(None, {"x": x})[0]
        assert after.shape == before.shape
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["segmenter", "detector"])
def test_commands_that_read_class_scores_refuse_them(models, kind: str, tmp_path: Path, capsys) -> None:
    model, data = str(models[kind]), str(models["data"])
    commands = [
        ["eval", model, "--data", data],
        ["compress", model, "--data", data, "--target", "macs=0.5", "-o", str(tmp_path / "s.onnx")],
        ["finetune", model, "--teacher", model, "--data", data, "-o", str(tmp_path / "t.onnx")],
    ]
    for argv in commands:
        assert main(argv) == ModelError.exit_code
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert SHAPES[kind] in err and "classifiers" in err and argv[0] in err and "inspect" in err
    assert not (tmp_path / "s.onnx").exists() and not (tmp_path / "t.onnx").exists()
    with pytest.raises(ModelError, match="classifiers"):
        api.evaluate(model, data)


def test_classifier_outputs_pass_the_check() -> None:
    # [N, classes], and SqueezeNet's [N, classes, 1, 1] (trailing 1-dims squeezed)
    g = GraphBuilder()
    x = g.relu(g.conv("x", 3, 8))
    assert class_scores_problem(g.build(g.head(x, 8))) is None
    g = GraphBuilder()
    pooled = g.node("GlobalAveragePool", [g.relu(g.conv("x", 3, 8))])
    assert class_scores_problem(g.build(g.conv(pooled, 8, 10, k=1, pads=[0, 0, 0, 0]))) is None
    g = GraphBuilder()
    spatial = g.conv(g.relu(g.conv("x", 3, 8)), 8, 10, k=1, pads=[0, 0, 0, 0])
    assert "[N, 10, 8, 8]" in class_scores_problem(g.build(spatial))
