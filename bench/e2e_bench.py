"""`onnxcompress compress` end to end on the MLPerf Tiny ResNet-8 (issue 7), the way a user runs
it: the CLI in a subprocess, then the students judged on the 10,000-image CIFAR-10 test set that
the run never saw.

1. all classes: `onnxcompress RESNET8 --data cifar10_train10k_jpeg.npz --target macs=0.5 --scale 1`
2. vehicles only: the same with `--classes 0,1,8,9 --target macs=M/2`, M the MACs fraction the
   student of (1) kept, judged on the 4-class test subset against the teacher restricted to those 4
   logits.

Both runs use the same seed and fine-tuning budget. Latency: each student timed in pairs with
the teacher (CPU time of the single inference thread, `compiler.runtime.compare_latency`).

    python -m bench e2e [--quick] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import CIFAR_TEST, CIFAR_TRAIN, RESNET8, header, require_realdata, table, write_result
from onnxcompress import api
from onnxcompress.compiler.cost import model_cost
from onnxcompress.compiler.data import InputSpec, Preprocess, load_data
from onnxcompress.compiler.metrics import top1
from onnxcompress.compiler.onnx_io import canonicalize, load_model
from onnxcompress.compiler.runtime import compare_latency

VEHICLES = (0, 1, 8, 9)  # airplane, automobile, ship, truck
SEED = 0
EPOCHS = 30
MAX_DROP = 1.5
MAX_LATENCY = 0.65
MAX_MINUTES = 45


def _compress(out: Path, target: str, epochs: int, episodes: int | None, classes: tuple[int, ...] | None) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "onnxcompress", str(RESNET8), "--data", str(CIFAR_TRAIN), "--target", target,
           "--scale", "1", "--finetune-epochs", str(epochs), "--seed", str(SEED), "--max-drop", str(MAX_DROP),
           "-o", str(out), "--report", str(out.with_suffix(".json")), "--quiet"]
    if episodes is not None:
        cmd += ["--episodes", str(episodes)]
    if classes is not None:
        cmd += ["--classes", ",".join(map(str, classes))]
    print("$ " + " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"compress failed ({r.returncode}): {r.stderr[-2000:]}")
    print(r.stdout[-1500:], flush=True)
    return wall, json.loads(out.with_suffix(".json").read_text())


def run(quick: bool = False, epochs: int | None = None) -> str:
    require_realdata()
    epochs = epochs or (1 if quick else EPOCHS)
    episodes = 8 if quick else None
    pre = Preprocess(scale=1.0)
    teacher = canonicalize(load_model(RESNET8))
    test = load_data(CIFAR_TEST, InputSpec.from_model(teacher), pre, limit=2000 if quick else None)
    work = Path(tempfile.mkdtemp(prefix="onnxcompress-e2e-"))

    wall_all, rep_all = _compress(work / "all.onnx", "macs=0.5", epochs, episodes, None)
    # "at least 2x smaller than the all-class student at the same accuracy budget": the vehicles
    # run asks for half of what the all-class student actually kept, with the same --max-drop
    half = math.floor(500 * rep_all["student"]["macs"] / rep_all["teacher"]["macs"]) / 1000
    wall_veh, rep_veh = _compress(work / "vehicles.onnx", f"macs={half:g}", epochs, episodes, VEHICLES)
    student_all, student_veh = load_model(work / "all.onnx"), load_model(work / "vehicles.onnx")

    t_scores = api.predict(teacher, test.x)
    s_scores = api.predict(student_all, test.x)
    acc_t, acc_s = top1(t_scores, test.y), top1(s_scores, test.y)
    mask = np.isin(test.y, VEHICLES)
    y4 = np.searchsorted(np.array(VEHICLES), test.y[mask])
    acc_t4 = top1(t_scores[mask][:, VEHICLES], y4)
    acc_s4_all = top1(s_scores[mask][:, VEHICLES], y4)
    acc_v4 = top1(api.predict(student_veh, test.x[mask]), y4)

    lat = compare_latency([teacher, student_all, student_veh], test.x[:32], rounds=5 if quick else 11)
    ct, ca, cv = model_cost(teacher), model_cost(student_all), model_cost(student_veh)
    r_all, r_veh = lat[1].batch32 / lat[0].batch32, lat[2].batch32 / lat[0].batch32

    def row(name, cost, acc, base, acc4, base4, latency, wall, report):
        return [name, f"{cost.macs / ct.macs:.3f} ({cost.macs / 1e6:.2f} M)", f"{cost.params / ct.params:.3f}",
                "—" if acc is None else f"{100 * acc:.2f}", "—" if acc is None else f"{100 * (acc - base):+.2f}",
                f"{100 * acc4:.2f}", f"{100 * (acc4 - base4):+.2f}", f"{latency.batch1 / lat[0].batch1:.3f}",
                f"{latency.batch32 / lat[0].batch32:.3f}",
                "—" if report is None else f"{report['search']['wall_s']:.0f} / {report['finetune']['wall_s']:.0f} / {wall:.0f}"]

    rows = [
        row("teacher (as delivered)", ct, acc_t, acc_t, acc_t4, acc_t4, lat[0], 0.0, None),
        row("all classes, macs=0.5", ca, acc_s, acc_t, acc_s4_all, acc_t4, lat[1], wall_all, rep_all),
        row(f"vehicles 0,1,8,9, macs={half:g}", cv, None, acc_t, acc_v4, acc_t4, lat[2], wall_veh, rep_veh),
    ]
    drop = 100 * (acc_t - acc_s)
    drop4 = 100 * (acc_t4 - acc_v4)
    checks = [
        ("all-class student MACs ≤ 0.5x", ca.macs <= 0.5 * ct.macs, f"{ca.macs / ct.macs:.3f}"),
        (f"batch-32 latency ≤ {MAX_LATENCY}x", r_all <= MAX_LATENCY, f"{r_all:.3f}"),
        (f"top-1 loss ≤ {MAX_DROP} points (10k test)", drop <= MAX_DROP, f"{drop:.2f}"),
        (f"end to end < {MAX_MINUTES} min", wall_all < 60 * MAX_MINUTES, f"{wall_all / 60:.1f} min"),
        ("vehicles student ≥ 2x smaller in MACs than the all-class one", cv.macs * 2 <= ca.macs, f"{ca.macs / cv.macs:.2f}x"),
        (f"vehicles student within {MAX_DROP} points on the 4-class test subset", drop4 <= MAX_DROP, f"{drop4:.2f}"),
    ]
    command = "python -m bench e2e" + (" --quick" if quick else "") + (f" --epochs {epochs}" if epochs not in (1, EPOCHS) else "")
    text = header("End to end: `onnxcompress compress` on the MLPerf Tiny ResNet-8 (issue 7)", command)
    text += (
        f"\nCommands (in {work.name}/): `{' '.join(['onnxcompress', RESNET8.name, '--data', CIFAR_TRAIN.name, '--target', 'macs=0.5', '--scale', '1', '--finetune-epochs', str(epochs), '--seed', str(SEED)])}`"
        f" and the same with `--classes {','.join(map(str, VEHICLES))} --target macs={half:g}` (half the MACs the all-class student kept). Default agent (ddpg), "
        f"{rep_all['search']['episodes']} episodes; the validation subset is held out of the 10k training file by compress; "
        f"top-1 on {len(test)} images of cifar10_test_jpeg.npz, never seen by the runs (4-class subset: {int(mask.sum())} images; "
        "the teacher restricted to the same 4 logits). Latency: paired with the teacher, CPU time, batch 1 / 32. "
        "Times: search / fine-tune / whole command, seconds.\n\n"
    )
    text += table(["model", "MACs", "params", "top-1 %", "Δ pts", "4-class top-1 %", "Δ pts (4-class)", "latency b1", "latency b32",
                   "time s"], rows)
    text += "\n\nDone-criteria:\n\n" + "\n".join(f"- {name}: {value} — {'met' if ok else '**NOT met**'}" for name, ok, value in checks) + "\n"
    text += "\nPlans found:\n\n" + "".join(f"- {name}: `{json.dumps(rep['plan'])}`\n" for name, rep in (("all", rep_all), ("vehicles", rep_veh)))
    text += "\n" + families_table(rep_all, rep_veh) + NOTES
    return text


def families_table(*reports: dict) -> str:
    """The structure families each run compared (search/structure.py), from the reports."""
    rows = []
    for name, rep in zip(("all classes", "vehicles"), reports):
        for per_target in rep["search"].get("families", []):
            for f in per_target:
                fam, full = f["plan"]["passes"], rep["plan"]["passes"]  # the report's plan adds subset_classes first
                chosen = fam == full[len(full) - len(fam):]
                rows.append([name, ", ".join(f["removed"]) or "— (channels only)", f"{100 * (f['search_accuracy'] or 0):.1f}",
                             f"{100 * f['probe_accuracy']:.1f}", f"{f['macs'] / 1e6:.2f} M", "chosen" if chosen else ""])
    if not rows:
        return ""
    return ("Structure families (validation top-1 of each family's best plan before fine-tuning, and after the one-epoch "
            "probe that decides):\n\n" + table(["run", "removed", "top-1 before", "top-1 after probe", "MACs", ""], rows) + "\n")


NOTES = """
What makes the difference: the structure. Without fine-tuning, the search's own measure, the
channel-only plans score as well as or better than the plans that remove the first residual block
(the least-squares refit cannot replace two convolutions). After a one-epoch KD probe the removal
is clearly ahead, and after the full fine-tune the student is above the teacher as delivered: the
CIFAR-10 copy here is JPEG-decoded, so fine-tuning also adapts to JPEG; bench/results/finetune.md
measures the teacher itself gaining ~4.6 points from the same recipe. A removed block is also real
time saved in onnxruntime, whereas thinning ResNet-8's 16-channel stage gains little (see
bench/results/structural.md).
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench e2e")
    p.add_argument("--quick", action="store_true", help="8 episodes, 1 epoch, 2,000 test images")
    p.add_argument("--epochs", type=int, default=None, help=f"fine-tuning epochs (default {EPOCHS})")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    path = write_result("e2e", run(args.quick, args.epochs))
    print(path.read_text())


if __name__ == "__main__":
    main()
