"""Every bad input through the real CLI (a subprocess): one clear line on stderr, a distinct
non-zero exit status, no output file, and the input file unchanged."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.builders import GraphBuilder, resnet_like


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxcompress", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = d / "model.onnx"
    model.write_bytes(resnet_like().SerializeToString())
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", x=rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8), y=rng.integers(0, 10, 40))
    np.savez(d / "wrong_size.npz", x=rng.integers(0, 255, (10, 9, 9, 3), dtype=np.uint8), y=rng.integers(0, 10, 10))
    np.savez(d / "grey.npz", x=rng.integers(0, 255, (10, 8, 8), dtype=np.uint8))
    np.savez(d / "bad_labels.npz", x=rng.integers(0, 255, (10, 8, 8, 3), dtype=np.uint8), y=np.full(10, 12))
    nan = rng.standard_normal((10, 3, 8, 8)).astype(np.float32)
    nan[0, 0, 0, 0] = np.nan
    np.savez(d / "nan.npz", x=nan)
    (d / "text.onnx").write_text("this is not a model\n")
    (d / "empty.onnx").write_bytes(b"")
    (d / "random.onnx").write_bytes(rng.integers(0, 255, 4096, dtype=np.uint8).tobytes())
    good = resnet_like().SerializeToString()
    (d / "truncated.onnx").write_bytes(good[: len(good) // 3])
    bad = resnet_like()
    bad.graph.node[0].input[0] = "nonexistent_tensor"
    (d / "checker.onnx").write_bytes(bad.SerializeToString())
    nanw = resnet_like()
    w = onnx.numpy_helper.to_array(nanw.graph.initializer[0]).copy()
    w.flat[0] = np.inf
    nanw.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, nanw.graph.initializer[0].name))
    (d / "nan_weights.onnx").write_bytes(nanw.SerializeToString())
    g = GraphBuilder()
    y = g.relu(g.node("Add", ["x", g.const(np.ones((1, 3, 1, 1), np.float32))]))
    (d / "noconv.onnx").write_bytes(g.build(y).SerializeToString())
    ext = resnet_like()
    init = ext.graph.initializer[0]
    init.ClearField("raw_data")
    del init.float_data[:]
    init.data_location = onnx.TensorProto.EXTERNAL
    init.external_data.add(key="location", value="../outside.bin")
    (d / "external_outside.onnx").write_bytes(ext.SerializeToString())
    ext.graph.initializer[0].external_data[0].value = "weights_missing.bin"
    (d / "external_missing.onnx").write_bytes(ext.SerializeToString())
    two = resnet_like()
    two.graph.output.append(onnx.helper.make_tensor_value_info(two.graph.node[0].output[0], onnx.TensorProto.FLOAT, ["N", 16, 8, 8]))
    (d / "two_outputs.onnx").write_bytes(two.SerializeToString())
    dyn = resnet_like()
    dims = dyn.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    del dyn.graph.value_info[:]
    (d / "dynamic.onnx").write_bytes(dyn.SerializeToString())
    g = GraphBuilder(seed=0)  # a single sigmoid score from a 1x1 conv head: not widened to two classes
    score = g.node("Flatten", [g.node("GlobalAveragePool", [g.conv(g.relu(g.conv("x", 3, 8)), 8, 1, k=1, pads=[0, 0, 0, 0])])], axis=1)
    (d / "binary.onnx").write_bytes(g.build(g.node("Sigmoid", [score])).SerializeToString())
    np.savez(d / "binary.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array([0, 1, 1, 0]))
    (d / "plan.json").write_text(json.dumps({"passes": [{"pass": "prune_channels", "ratio": 0.5}]}))
    (d / "plan_badid.json").write_text(json.dumps({"passes": [{"pass": "prune_channels", "group": "g77", "keep": 2}]}))
    (d / "plan_badpass.json").write_text(json.dumps({"passes": [{"pass": "shrink"}]}))
    (d / "plan_ratio.json").write_text(json.dumps({"passes": [{"pass": "prune_channels", "ratio": 1.5}]}))
    (d / "plan_class.json").write_text(json.dumps({"passes": [{"pass": "subset_classes", "classes": [3, 99]}]}))
    (d / "plan_notjson.json").write_text("{passes: [")
    return d


CASES = [
    # (name, args, expected exit, message fragment)
    ("missing model", ["inspect", "{d}/missing.onnx"], 3, "does not exist"),
    ("directory", ["inspect", "{d}"], 3, "directory"),
    ("text file", ["inspect", "{d}/text.onnx"], 3, "not a readable ONNX"),
    ("empty file", ["inspect", "{d}/empty.onnx"], 3, "empty"),
    ("random bytes", ["inspect", "{d}/random.onnx"], 3, "ONNX"),
    ("truncated", ["inspect", "{d}/truncated.onnx"], 3, "ONNX"),
    ("checker rejects", ["inspect", "{d}/checker.onnx"], 3, "checker"),
    ("NaN weights", ["inspect", "{d}/nan_weights.onnx"], 3, "NaN or Inf"),
    ("external data outside folder", ["inspect", "{d}/external_outside.onnx"], 3, "outside"),
    ("external data missing", ["inspect", "{d}/external_missing.onnx"], 3, "missing"),
    ("several outputs", ["inspect", "{d}/two_outputs.onnx"], 3, "2 outputs"),
    ("dynamic spatial size", ["inspect", "{d}/dynamic.onnx"], 3, "dynamic input height/width; give --input-size"),
    ("single score, unsupported head", ["inspect", "{d}/binary.onnx"], 3, "cannot widen to two classes"),
    ("single score, labels 0/1", ["eval", "{d}/binary.onnx", "--data", "{d}/binary.npz"], 3, "export it with 2 outputs"),
    ("no conv or gemm", ["apply", "{d}/noconv.onnx", "{d}/plan.json", "-o", "{d}/out.onnx"], 3, "no Conv"),
    ("unknown pass", ["apply", "{d}/model.onnx", "{d}/plan_badpass.json", "-o", "{d}/out.onnx"], 5, "unknown pass"),
    ("unknown group id", ["apply", "{d}/model.onnx", "{d}/plan_badid.json", "-o", "{d}/out.onnx"], 5, "unknown group"),
    ("ratio out of range", ["apply", "{d}/model.onnx", "{d}/plan_ratio.json", "-o", "{d}/out.onnx"], 5, "ratio"),
    ("class out of range", ["apply", "{d}/model.onnx", "{d}/plan_class.json", "-o", "{d}/out.onnx"], 5, "out of range"),
    ("plan not json", ["apply", "{d}/model.onnx", "{d}/plan_notjson.json", "-o", "{d}/out.onnx"], 5, "not valid JSON"),
    ("missing plan", ["apply", "{d}/model.onnx", "{d}/nope.json", "-o", "{d}/out.onnx"], 5, "does not exist"),
    ("-o is the input", ["apply", "{d}/model.onnx", "{d}/plan.json", "-o", "{d}/model.onnx"], 2, "input"),
    ("-o folder missing", ["apply", "{d}/model.onnx", "{d}/plan.json", "-o", "{d}/nofolder/out.onnx"], 2, "does not exist"),
    ("image size mismatch", ["eval", "{d}/model.onnx", "--data", "{d}/wrong_size.npz"], 4, "9"),
    ("channels mismatch", ["eval", "{d}/model.onnx", "--data", "{d}/grey.npz"], 4, "channel"),
    ("labels out of range", ["eval", "{d}/model.onnx", "--data", "{d}/bad_labels.npz"], 4, "label"),
    ("NaN data", ["eval", "{d}/model.onnx", "--data", "{d}/nan.npz"], 4, "NaN"),
    ("classes out of range", ["compress", "{d}/model.onnx", "--data", "{d}/data.npz", "--target", "macs=0.5", "--classes", "3,12", "-o", "{d}/out.onnx"], 2, "out of range"),
    ("missing data", ["eval", "{d}/model.onnx", "--data", "{d}/nodata.npz"], 4, "does not exist"),
    ("bad target", ["compress", "{d}/model.onnx", "--data", "{d}/data.npz", "--target", "macs:half", "-o", "{d}/out.onnx"], 2, "target"),
    ("impossible target", ["compress", "{d}/model.onnx", "--data", "{d}/data.npz", "--target", "macs=1.5", "-o", "{d}/out.onnx"], 2, "impossible"),
    ("channel multiple below 1", ["compress", "{d}/model.onnx", "--data", "{d}/data.npz", "--target", "macs=0.5", "--channel-multiple", "0", "-o", "{d}/out.onnx"], 2, "channel-multiple"),
    ("unknown option", ["inspect", "{d}/model.onnx", "--frobnicate"], 2, "unrecognized"),
]


@pytest.mark.parametrize("name,args,code,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(files, name, args, code, fragment):
    d = files
    before = {p.name: sha(p) for p in d.iterdir() if p.is_file()}
    r = cli(*[a.format(d=d) for a in args])
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and fragment.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in r.stderr
    after = {p.name: sha(p) for p in d.iterdir() if p.is_file()}
    assert after == before  # nothing written, nothing changed


def test_debug_shows_traceback(files):
    r = cli("inspect", str(files / "text.onnx"), "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_inspect_json_contract(files):
    r = cli("inspect", str(files / "model.onnx"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    for key in ("model", "opset", "inputs", "outputs", "macs", "params", "size_bytes", "layers", "groups", "removable", "quantizable"):
        assert key in doc
    assert doc["groups"] and set(doc["groups"][0]) >= {"id", "channels", "members", "prunable", "reason"}
    assert all(set(u) == {"id", "nodes", "kind"} for u in doc["removable"])


@pytest.mark.slow
def test_apply_and_eval(files, tmp_path):
    out = tmp_path / "student.onnx"
    r = cli("apply", str(files / "model.onnx"), str(files / "plan.json"), "-o", str(out), "--data", str(files / "data.npz"))
    assert r.returncode == 0, r.stderr
    assert out.exists() and [p.name for p in tmp_path.iterdir()] == ["student.onnx"]
    r = cli("eval", str(out), "--data", str(files / "data.npz"), "--teacher", str(files / "model.onnx"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert 0 <= doc["accuracy"] <= 1 and 0 <= doc["agreement"] <= 1 and doc["latency_ms"]["batch32"] > 0


def test_eval_runs_a_model_exported_with_a_fixed_batch(files, tmp_path):
    """Exporters often fix the batch to 1 (the ONNX zoo's SqueezeNet): eval still runs the data
    in batches and times batch 32, and the file is not touched."""
    fixed = resnet_like()
    for vi in list(fixed.graph.input[:1]) + list(fixed.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    path = tmp_path / "fixed.onnx"
    path.write_bytes(fixed.SerializeToString())
    before = sha(path)
    r = cli("eval", str(path), "--data", str(files / "data.npz"), "--teacher", str(files / "model.onnx"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["samples"] == 40 and doc["agreement"] == 1.0 and doc["latency_ms"]["batch32"] > 0
    assert sha(path) == before


@pytest.mark.slow
def test_bgr_flag_reverses_the_channels(files, tmp_path):
    """A classifier whose class is its brightest input channel, labelled on RGB images: the same
    images stored BGR score 100 % with --bgr (eval turns them back) and less without."""
    g = GraphBuilder()
    eye = np.eye(3, dtype=np.float32)
    c = g.node("Conv", ["x", g.const(eye.reshape(3, 3, 1, 1))], kernel_shape=[1, 1])
    flat = g.node("Flatten", [g.node("GlobalAveragePool", [c])], axis=1)
    model = tmp_path / "brightest.onnx"
    model.write_bytes(g.build(g.node("Gemm", [flat, g.const(eye)], transB=1)).SerializeToString())
    x = np.load(files / "data.npz")["x"]
    labels = x.reshape(len(x), -1, 3).mean(1).argmax(1)
    np.savez(tmp_path / "bgr.npz", x=np.ascontiguousarray(x[..., ::-1]), y=labels)
    with_flag = cli("eval", str(model), "--data", str(tmp_path / "bgr.npz"), "--bgr", "--json")
    assert with_flag.returncode == 0, with_flag.stderr
    assert json.loads(with_flag.stdout)["accuracy"] == 1.0
    without = json.loads(cli("eval", str(model), "--data", str(tmp_path / "bgr.npz"), "--json").stdout)
    assert without["accuracy"] < 0.9
    # a model written by apply remembers the preprocessing it was given: eval needs no flags
    (tmp_path / "empty.json").write_text('{"passes": []}')
    out = tmp_path / "applied.onnx"
    r = cli("apply", str(model), str(tmp_path / "empty.json"), "-o", str(out), "--bgr", "--scale", "0.5")
    assert r.returncode == 0, r.stderr
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["onnxcompress.channel_order"] == "bgr" and float(props["onnxcompress.scale"]) == 0.5
    again = cli("eval", str(out), "--data", str(tmp_path / "bgr.npz"), "--json")
    assert json.loads(again.stdout)["accuracy"] == 1.0


@pytest.mark.slow
def test_finetune_feeds_the_inputs_the_student_was_built_for(files, tmp_path):
    """A student written by `apply --scale 0.5` is fine-tuned (and written) with that scale without
    the flag; the teacher, which records none, would have given x/255."""
    (tmp_path / "empty.json").write_text('{"passes": []}')
    student, tuned = tmp_path / "s.onnx", tmp_path / "t.onnx"
    r = cli("apply", str(files / "model.onnx"), str(tmp_path / "empty.json"), "-o", str(student), "--scale", "0.5")
    assert r.returncode == 0, r.stderr
    r = cli("finetune", str(student), "--teacher", str(files / "model.onnx"), "--data", str(files / "data.npz"),
            "--epochs", "1", "-o", str(tuned), "--quiet")
    assert r.returncode == 0, r.stderr
    props = {p.key: p.value for p in onnx.load(str(tuned)).metadata_props}
    assert float(props["onnxcompress.scale"]) == 0.5


@pytest.mark.parametrize("large", [False, True])
def test_finetune_uses_compress_recipe_for_its_data_size(files, tmp_path, monkeypatch, large):
    """`finetune` trains with the recipe compress gives the same data (batch 64 on every core
    from LARGE_DATA images, else batch 16 on one thread): it used the small-data one always."""
    import os
    from types import SimpleNamespace

    from onnxcompress import pipeline
    from onnxcompress.cli import main
    from onnxcompress.compiler import trainer

    seen = []

    def fake(student, teacher, train, val, config, **kwargs):
        seen.append(config)
        return student, SimpleNamespace(best_val_accuracy=None, initial_val_accuracy=None, epochs_run=0, wall_s=0.0, precision="fp32")

    monkeypatch.setattr(trainer, "finetune", fake)
    monkeypatch.setattr(pipeline, "LARGE_DATA", 40 if large else 41)  # the fixture's data has 40 images
    rc = main(["finetune", str(files / "model.onnx"), "--teacher", str(files / "model.onnx"), "--data", str(files / "data.npz"),
               "--epochs", "1", "-o", str(tmp_path / "t.onnx"), "--quiet"])
    assert rc == 0 and len(seen) == 1
    assert (seen[0].batch_size, seen[0].threads) == ((pipeline.LARGE_DATA_BATCH, os.cpu_count() or 1) if large else (16, 1))


def test_unknown_custom_op_is_inspected_not_fatal(tmp_path):
    g = GraphBuilder()
    x = g.relu(g.conv("x", 3, 8))
    m = g.build(g.head(g.relu(g.conv(x, 8, 8)), 8))
    m.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "Swish", "com.example"
    p = tmp_path / "custom.onnx"
    p.write_bytes(m.SerializeToString())
    r = cli("inspect", str(p))
    assert r.returncode == 0, r.stderr
    assert "Swish" in r.stdout and "frozen" in r.stdout


def test_version_and_help():
    from onnxcompress import __version__
    from onnxcompress.cli import main

    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"onnxcompress {__version__}"
    assert main(["--version"]) == 0 and main(["--help"]) == 0  # in-process: a status, not SystemExit
