"""Issue 18: compress with the teacher's own training images. A teacher that fits the validation
images (held out of --data) is warned about once, naming --val-data, and the budget is judged on a
measure the report names (agreement with the teacher), never "NOT met" against a memorised 100 %;
with --val-data held-out images, the verdict is top-1 on those images."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from onnxcompress.compiler.teacher_fit import teacher_fit

CLASSES = 4


def _images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """8x8 RGB noise; class k < 3 brightens channel k, class 3 every channel."""
    y = rng.integers(0, CLASSES, n)
    x = rng.integers(0, 110, (n, 8, 8, 3)).astype(np.int64)
    for k in range(3):
        x[y == k, :, :, k] += 120
    x[y == 3] += 80
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A small CNN trained to 100 % top-1 (and near-zero loss) on its 400 training images, and 300
    held-out images whose labels it gets about 85 % of (15 % of them wrong)."""
    import torch
    from torch import nn

    from onnxcompress.models.export import export_onnx

    d = tmp_path_factory.mktemp("fit")
    rng = np.random.default_rng(0)
    x, y = _images(rng, 400)
    np.savez(d / "train.npz", x=x, y=y)
    xt, yt = _images(rng, 300)
    yt[::7] = (yt[::7] + 1) % CLASSES
    np.savez(d / "test.npz", x=xt, y=yt)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, CLASSES))
    inputs = torch.from_numpy(x.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    labels = torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(inputs), labels)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        assert (net(inputs).argmax(1) == labels).all(), "the teacher must fit its training images"
    export_onnx(net, d / "teacher.onnx", input_shape=(1, 3, 8, 8))
    return d


def cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxcompress", *args], capture_output=True, text=True, timeout=600)


def _compress(d, name, *extra):
    out, rep = d / f"{name}.onnx", d / f"{name}.json"
    r = cli(str(d / "teacher.onnx"), "--data", str(d / "train.npz"), "--target", "macs=0.1", "--agent", "uniform", "--episodes", "1",
            "--finetune-epochs", "1", "--families", "1", "--max-drop", "0", "-o", str(out), "--report", str(rep), *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    return r, json.loads(rep.read_text()), rep.with_suffix(".md").read_text()


def test_the_rule_on_scores():
    y = np.arange(1000) % 10
    sure = np.eye(10)[y] * 30.0  # memorised: right and confident
    assert teacher_fit(sure, y).fits and teacher_fit(sure, y).cross_entropy < 1e-6
    wrong = sure.copy()
    wrong[:11] = np.eye(10)[(y[:11] + 1) % 10] * 30.0  # 98.9 % (MNIST-8 on its test set), confidently wrong
    assert not teacher_fit(wrong, y).fits
    assert teacher_fit(wrong[7:], y[7:]).fits  # 4 errors in 993: 99.6 %, saturated
    assert not teacher_fit(wrong[5:], y[5:]).fits  # 6 errors in 995: 99.4 %, loss 0.17: not the signature of seen images
    near = wrong.copy()
    near[np.arange(11), y[:11]] = 29.9  # the same errors, each a near tie: 99.4 % at loss 0.005 fits, 98.9 % never
    assert teacher_fit(near[5:], y[5:]).cross_entropy < 0.01 and teacher_fit(near[5:], y[5:]).fits
    assert not teacher_fit(near, y).fits
    soft = np.eye(10)[y] * 0.9 + 0.01  # a softmax head's probabilities are used as they are
    assert abs(teacher_fit(soft, y).cross_entropy + np.log(0.91)) < 1e-6
    assert teacher_fit(sure, None) is None


def test_saturated_split_warns_once_and_judges_agreement(fitted):
    r, doc, md = _compress(fitted, "seen")
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: the teacher scores 100.00% top-1"), r.stderr
    assert "held out of --data train.npz" in warnings[0] and "training images" in warnings[0] and "--val-data" in warnings[0]
    m = doc["measure"]
    assert m["kind"] == "agreement" and m["n"] == 80 and m["images"] == "80 validation images held out of --data train.npz"
    assert m["teacher_top1"] == 1.0 and m["teacher_cross_entropy"] < 0.02 and "--val-data" in m["note"]
    assert doc["teacher"]["accuracy"] == 1.0
    (student,) = doc["students"]
    assert student["note"].startswith("agreement with the teacher ") and "on 80 validation images held out of --data" in student["note"]
    # budget 0: any disagreement exceeds it; said on agreement, never "NOT met" against the memorised 100 %
    assert "NOT met" not in r.stdout + md + json.dumps(doc)
    if not student["feasible"]:
        assert "disagrees with the teacher" in student["note"] and "--val-data" in student["note"]
    assert "Accuracy: agreement with the teacher on 80 validation images held out of --data train.npz" in r.stdout
    assert "| model | agreement with teacher |" in r.stdout and "Accuracy: agreement with the teacher on 80" in md


def test_held_out_val_data_judges_top1_on_those_images(fitted):
    r, doc, md = _compress(fitted, "held_out", "--val-data", str(fitted / "test.npz"))
    assert "warning" not in r.stderr, r.stderr
    m = doc["measure"]
    assert m == {"kind": "top1", "images": "300 images of --val-data test.npz", "n": 300, "note": None}
    assert 0.8 <= doc["teacher"]["accuracy"] <= 0.9
    note = doc["students"][0]["note"]
    got = re.match(r"accuracy ([\d.]+)% \(([+-][\d.]+) points vs the teacher's ([\d.]+)%\) on 300 images of --val-data test\.npz", note)
    assert got and abs(float(got[3]) - 100 * doc["teacher"]["accuracy"]) < 0.006, note
    assert "teacher: top-1" in r.stderr and "| model | top-1 |" in r.stdout and "Accuracy: top-1 on 300 images of --val-data" in md


def test_a_fitting_teacher_s_predictions_become_the_validation_labels(capsys):
    """Every stage (search rewards, probes, fine-tune epochs, Pareto front, verdict) then measures
    agreement without knowing; a teacher at 99.6 % shows it (at 100 % labels and predictions agree)."""
    from onnxcompress.compiler.data import Dataset
    from onnxcompress.pipeline import JobData, _choose_measure

    y = np.arange(1000) % 10
    scores = np.eye(10)[y] * 30.0
    scores[:4] = np.eye(10)[(y[:4] + 1) % 10] * 30.0  # wrong on 4: 99.6 %
    val = Dataset(x=np.zeros((1000, 1, 2, 2), np.float32), y=y.astype(np.int64))
    job = JobData(val, val, val.x, "1,000 validation images held out of --data t.npz")
    fitted, m = _choose_measure(job, scores, scores.argmax(1), False, progress=True)
    assert m.kind == "agreement" and m.fit["teacher_top1"] == 0.996 and np.array_equal(fitted.val.y, scores.argmax(1))
    assert fitted.train is job.train  # only the validation labels change
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "--val-data" in err
    _, m = _choose_measure(job, scores, scores.argmax(1), True, progress=True)  # the user's --val-data fits too
    assert m.kind == "agreement" and "were they among its training images?" in capsys.readouterr().err
    held_out = np.eye(10)[(y + (np.arange(1000) % 10 == 0)) % 10] * 3.0  # 90 %, unsure: a test set
    same, m = _choose_measure(job, held_out, held_out.argmax(1), True, progress=True)
    assert m.kind == "top1" and same is job and capsys.readouterr().err == ""
    unlabelled = JobData(val, Dataset(x=val.x), val.x, "1,000 images")
    assert _choose_measure(unlabelled, scores, scores.argmax(1), False, progress=True)[1].kind == "agreement"


def test_an_exceeded_budget_on_agreement_is_never_NOT_met():
    from onnxcompress.pipeline import _accuracy_note, _budget_note
    from onnxcompress.report import Measure

    seen = Measure("agreement", "2,000 validation images held out of --data train.npz", 2000, "the teacher fits these images",
                   {"teacher_top1": 1.0, "teacher_cross_entropy": 0.001})
    note = _accuracy_note(0.887, 1.0, 11.3, seen) + _budget_note(11.3, 1.0, seen)
    assert note.startswith("agreement with the teacher 88.70% (-11.30 points vs the teacher's own 100.00%) on 2,000 validation images")
    assert "NOT met" not in note and "disagrees with the teacher on 11.30% of these images" in note and "--val-data" in note
    top1 = Measure("top1", "1,000 images of --val-data test.npz", 1000)
    note = _accuracy_note(0.891, 0.926, 3.5, top1) + _budget_note(3.5, 1.0, top1)
    assert note.startswith("accuracy 89.10% (-3.50 points vs the teacher's 92.60%) on 1,000 images of --val-data test.npz")
    assert "budget of 1.0 points was NOT met" in note
    assert _accuracy_note(1.0, 1.0, 0.0, seen).startswith("agreement with the teacher 100.00% (+0.00 points")
