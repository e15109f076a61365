"""`onnxcompress compress` end to end on a tiny teacher (seconds, not minutes): the student is a
valid model within the target, and the report describes it correctly."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest

from onnxcompress.compiler.cost import model_cost
from onnxcompress.compiler.runtime import make_session
from tests.builders import resnet_like


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    d = tmp_path_factory.mktemp("compress")
    teacher = resnet_like(width=16, blocks=2)
    (d / "teacher.onnx").write_bytes(teacher.SerializeToString())
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (600, 8, 8, 3), dtype=np.uint8)
    s = make_session(teacher)
    logits = s.run(None, {"x": (x.astype(np.float32) / 255.0).transpose(0, 3, 1, 2)})[0]
    y = logits.argmax(1)
    y[::10] = (y[::10] + 1) % logits.shape[1]  # labels the teacher gets right on 90 %: it does not fit them (teacher_fit.py)
    np.savez(d / "train.npz", x=x, y=y)
    return d


def cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxcompress", *args], capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_compress_writes_student_and_report(job):
    out, rep = job / "student.onnx", job / "report.json"
    r = cli(str(job / "teacher.onnx"), "--data", str(job / "train.npz"), "--target", "macs=0.5", "--agent", "uniform",
            "--episodes", "4", "--finetune-epochs", "1", "-o", str(out), "--report", str(rep), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    student = onnx.load(str(out))
    onnx.checker.check_model(student)
    doc = json.loads(rep.read_text())
    cost = model_cost(student)
    assert doc["student"]["macs"] == cost.macs and doc["student"]["params"] == cost.params
    assert doc["student"]["size_bytes"] == student.ByteSize()
    assert doc["student"]["macs"] <= 0.5 * doc["teacher"]["macs"]
    for key in ("teacher", "student", "plan", "search", "finetune", "pareto", "target", "seed"):
        assert key in doc
    assert doc["device"] == "cpu"  # --device auto on a machine without CUDA
    assert set(doc["search"]) >= {"agent", "episodes", "evaluations", "wall_s"} and doc["finetune"]["epochs"] == 1
    assert doc["plan"]["passes"] and doc["target"] == {"macs": 0.5}
    # structure families: channel cuts alone, and with the residual blocks whose removal changes
    # the teacher least removed first (search/depth.py), each probed by a short fine-tune; among
    # the probes within one standard error of the best, the fastest measured is the student
    (families,) = doc["search"]["families"]
    assert families[0]["removed"] == [] and all(f["removed"] for f in families[1:]) and len(families) >= 2
    assert len({tuple(f["removed"]) for f in families}) == len(families)
    n_val = 120  # compress holds out a fifth of the 600 images
    top = max(f["probe_accuracy"] for f in families)
    se = max(1 / n_val, (top * (1 - top) / n_val) ** 0.5)
    tied = [f for f in families if f["probe_accuracy"] >= top - se]
    assert all(f["speedup"] > 0 for f in families)
    assert doc["plan"] == max(tied, key=lambda f: (f["speedup"], -f["macs"]))["plan"]
    png = rep.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "| teacher |" in rep.with_suffix(".md").read_text()
    assert "teacher" in r.stdout and "student" in r.stdout  # the summary table
    assert not list(job.glob("*.checkpoint"))  # cleaned up after success
    # the closing line states the change in accuracy with its sign (negative: a loss)
    m = re.search(r"accuracy ([\d.]+)% \(([+-][\d.]+) points vs the teacher's ([\d.]+)%\)", r.stdout)
    assert m, r.stdout[-1000:]
    assert abs(float(m[1]) - float(m[3]) - float(m[2])) < 0.011


@pytest.mark.parametrize("multiple", [1, 4])
def test_channel_multiple_sets_the_width_grid(job, multiple):
    """--channel-multiple: the search keeps widths on the grid when the budget allows (the
    default is onnxruntime's block on this CPU); 1 allows any width, which the uniform plan at
    0.5x MACs of a 16-channel network uses (11 of 16 channels kept)."""
    import onnxcompress

    result = onnxcompress.compress(str(job / "teacher.onnx"), str(job / "train.npz"), "macs=0.5", agent="uniform", episodes=2,
                                   finetune_epochs=0, families=1, channel_multiple=multiple, progress=False)
    report = result.report.to_json()
    assert report["search"]["channel_multiple"] == multiple
    assert report["student"]["macs"] <= 0.5 * report["teacher"]["macs"]
    widths = {student for teacher, student in result.report.students[0].channels.values() if student != teacher}
    assert widths, "the plan pruned nothing"
    on_grid = all(w % 4 == 0 for w in widths)
    assert on_grid if multiple == 4 else not on_grid, widths


@pytest.mark.slow
def test_compress_class_subset(job):
    out = job / "sub.onnx"
    present = np.flatnonzero(np.bincount(np.load(job / "train.npz")["y"], minlength=10))[::-1][:3]  # labels the data has
    classes = ",".join(str(c) for c in present)
    r = cli(str(job / "teacher.onnx"), "--data", str(job / "train.npz"), "--target", "macs=0.6", "--agent", "uniform",
            "--episodes", "3", "--finetune-epochs", "1", "--classes", classes, "-o", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    s = make_session(onnx.load(str(out)))
    y = s.run(None, {s.get_inputs()[0].name: np.zeros((2, 3, 8, 8), np.float32)})[0]
    assert y.shape == (2, len(present))


@pytest.mark.slow  # reads the report test_compress_writes_student_and_report writes
def test_replaying_the_reported_plan_gives_the_same_architecture(job):
    doc = json.loads((job / "report.json").read_text())
    plan = job / "plan.json"
    plan.write_text(json.dumps(doc["plan"]))
    out = job / "replayed.onnx"
    r = cli("apply", str(job / "teacher.onnx"), str(plan), "-o", str(out), "--data", str(job / "train.npz"))
    assert r.returncode == 0, r.stderr
    assert model_cost(onnx.load(str(out))).macs == doc["student"]["macs"]


@pytest.mark.slow
def test_apply_reads_the_plan_of_a_report(job):
    doc = json.loads((job / "report.json").read_text())
    out = job / "from_report.onnx"
    r = cli("apply", str(job / "teacher.onnx"), str(job / "report.json"), "-o", str(out), "--data", str(job / "train.npz"))
    assert r.returncode == 0, r.stderr
    assert model_cost(onnx.load(str(out))).macs == doc["student"]["macs"]
    # a report of several students: the user picks one
    two = dict(doc, students=[doc["students"][0], dict(doc["students"][0], target={"macs": 0.25}, plan={"passes": []})])
    (job / "two.json").write_text(json.dumps(two))
    out2 = job / "second.onnx"
    r = cli("apply", str(job / "teacher.onnx"), str(job / "two.json"), "-o", str(out2), "--data", str(job / "train.npz"))
    assert r.returncode == 5 and not out2.exists()
    assert "has 2 students (1: macs=0.5; 2: macs=0.25); choose one with --student N" in r.stderr
    r = cli("apply", str(job / "teacher.onnx"), str(job / "two.json"), "--student", "2", "-o", str(out2))
    assert r.returncode == 0, r.stderr
    assert model_cost(onnx.load(str(out2))).macs == doc["teacher"]["macs"]  # the empty plan


@pytest.mark.slow
@pytest.mark.parametrize("target,agent", [("size=0.3", "haq"), ("macs=0.5", "uniform")])
def test_no_finetuning(job, target, agent):
    """--finetune-epochs 0: the searched plan is written as is (the HAQ quantization-only use)."""
    out = job / f"noft-{agent}.onnx"
    r = cli(str(job / "teacher.onnx"), "--data", str(job / "train.npz"), "--target", target, "--agent", agent,
            "--episodes", "3", "--finetune-epochs", "0", "-o", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    onnx.checker.check_model(onnx.load(str(out)))


@pytest.mark.slow
def test_size_target_quantizes_after_finetuning(job):
    """A size target: HAQ's bit widths are applied to the (fine-tuned) float student, once; the
    bridge never sees a QDQ graph, and no blanket re-quantization follows a plan that fits."""
    out, rep = job / "haq.onnx", job / "haq.json"
    r = cli(str(job / "teacher.onnx"), "--data", str(job / "train.npz"), "--target", "size=0.3", "--agent", "haq",
            "--episodes", "3", "--finetune-epochs", "1", "-o", str(out), "--report", str(rep), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(rep.read_text())
    steps = [p["pass"] for p in doc["plan"]["passes"]]
    assert steps == ["quantize"], doc["plan"]
    assert doc["student"]["size_bytes"] <= 0.3 * doc["teacher"]["size_bytes"]
    assert any(n.op_type == "DequantizeLinear" for n in onnx.load(str(out)).graph.node)


@pytest.mark.slow
def test_unlabelled_data_measures_agreement_and_says_so(job, tmp_path):
    """Without labels the accuracies are agreement with the teacher (DESIGN.md); the run says so
    instead of printing a 100 % teacher top-1 unexplained."""
    np.savez(tmp_path / "nolabels.npz", x=np.load(job / "train.npz")["x"])
    out, rep = tmp_path / "s.onnx", tmp_path / "r.json"
    r = cli(str(job / "teacher.onnx"), "--data", str(tmp_path / "nolabels.npz"), "--target", "macs=0.5", "--agent", "uniform",
            "--episodes", "1", "--finetune-epochs", "0", "--families", "1", "-o", str(out), "--report", str(rep),
            "--scale", "0.0078125", "--mean", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no labels" in r.stderr and "agreement" in r.stderr
    # the student records the preprocessing it was built with (eval/finetune use it by default)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert float(props["onnxcompress.scale"]) == 0.0078125 and props["onnxcompress.mean"] == "1.0"
    doc = json.loads(rep.read_text())
    assert doc["teacher"]["accuracy"] == 1.0 and 0 <= doc["student"]["accuracy"] <= 1
