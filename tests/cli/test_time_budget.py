"""--time-budget: durations parse, the plan's arithmetic, and a compress run that keeps its budget
and reports how the time was spent."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from onnxcompress.budget import TimeBudget, epochs_within, episodes_within, parse_duration
from onnxcompress.errors import UsageError
from tests.cli.test_compress import job  # noqa: F401  (the tiny teacher and its data)


@pytest.mark.parametrize("text,seconds", [("60m", 3600), ("1h", 3600), ("1h30m", 5400), ("90s", 90), ("45", 2700), ("2.5m", 150)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "-5m", "0", "5m 3", "m"])
def test_bad_durations_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_duration(text)


def test_epochs_and_episodes_fit_what_is_left():
    # 100 s at 1 ms per image over 20,000 images: 20 s an epoch, 5 epochs (at most 30)
    assert epochs_within(100.0, 1e-3, 20_000, 30) == (5, 20_000)
    assert epochs_within(1000.0, 1e-3, 20_000, 30) == (30, 20_000)
    # not one epoch fits: one epoch over the images that fit (never fewer than 1,000)
    assert epochs_within(10.0, 1e-3, 20_000, 30) == (1, 10_000)
    assert epochs_within(0.1, 1e-3, 20_000, 30) == (1, 1000)
    assert episodes_within(60.0, 2.0, 3, 60) == 10
    assert episodes_within(6000.0, 2.0, 3, 60) == 60
    assert episodes_within(1.0, 2.0, 3, 60) == 6  # a minimum to learn anything


def test_phases_never_eat_the_fine_tuning_share():
    b = TimeBudget(1000.0, start=time.perf_counter() - 500.0)  # half spent already
    assert b.allow("search", 0.25) == pytest.approx(1000 - 500 - 40 - 350, abs=1.0)  # what is left, minus reserve and fine-tuning's share
    assert b.finetune_allowance() == pytest.approx(460.0, abs=1.0)
    b.record("search", 12.0)
    b.record("search", 3.0)
    doc = b.to_json()
    assert doc["spent_s"] == {"search": 15.0} and doc["budget_s"] == 1000.0 and set(doc["planned_s"]) == {"search", "finetune"}


@pytest.mark.slow
def test_compress_keeps_its_time_budget(job):  # noqa: F811
    out, rep = job / "budget.onnx", job / "budget.json"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "onnxcompress", str(job / "teacher.onnx"), "--data", str(job / "train.npz"),
                        "--target", "macs=0.5", "--time-budget", "75s", "-o", str(out), "--report", str(rep), "--quiet"],
                       capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(rep.read_text())
    tb = doc["time_budget"]
    assert tb["budget_s"] == 75.0
    assert {"prepare", "search", "finetune"} <= set(tb["spent_s"]) and tb["planned_s"]["finetune"] > 0
    assert any("per training image measured" in n for n in tb["notes"])
    assert doc["finetune"]["epochs"] >= 1
    # the run ends within its budget (plus the interpreter's start and the final writes)
    assert tb["elapsed_s"] <= 75.0 and wall <= 75.0 + 30.0, (tb, wall)
    assert "Time budget" in rep.with_suffix(".md").read_text()


def test_time_budget_flag_is_checked_before_any_work(job, tmp_path):  # noqa: F811
    r = subprocess.run([sys.executable, "-m", "onnxcompress", str(job / "teacher.onnx"), "--data", str(job / "train.npz"),
                        "--target", "macs=0.5", "--time-budget", "soon", "-o", str(tmp_path / "s.onnx")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "--time-budget" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.onnx").exists()
