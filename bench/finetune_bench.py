"""KD fine-tuning of a pruned student (issue 5), side by side in one run with the same budget and
seed: the MLPerf Tiny ResNet-8 (CIFAR-10) pruned to 50 % of its channels in every prunable group
(least-squares reconstruction from 256 calibration images), then fine-tuned for 5 epochs with
(a) KD (hinton + attention, + cross-entropy on the labels), (b) cross-entropy alone, and
(c) the unpruned teacher fine-tuned with recipe (a) as a reference: the CIFAR-10 copy here is
JPEG-decoded, so fine-tuning also adapts to JPEG, and row (c) measures that gain on its own.
Also a row for the bundled Fashion-MNIST reference teacher (its accuracy, measured here, and the
command that trained it).

Data: train = cifar10_train10k_jpeg.npz minus its last VAL_SIZE images, which are held out for
model selection (the best epoch by held-out accuracy is kept; the test set is never looked at
before the end); calibration = the first 256 training images; test = all 10,000 images of
cifar10_test_jpeg.npz (onnxruntime, after the weights are written back into the ONNX graph).
Preprocessing: raw 0..255 pixels (the model's own). torch and onnxruntime run on one thread.

    python -m bench.finetune_bench [--quick]      (or: python -m bench finetune)
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import onnx
import torch

from bench.common import CIFAR_TEST, CIFAR_TRAIN, REALDATA, RESNET8, header, require_realdata, table, write_result
from onnxcompress import api
from onnxcompress.compiler.data import Dataset, InputSpec, Preprocess, load_data
from onnxcompress.compiler import metrics
from onnxcompress.compiler.kd import KDConfig
from onnxcompress.compiler.onnx_io import canonicalize, load_model
from onnxcompress.compiler.trainer import FinetuneConfig, FinetuneResult, finetune

PLAN = {"passes": [{"pass": "prune_channels", "ratio": 0.5}]}  # the plan (criterion: the default, l1)
# the same plan choosing channels by their activations on the calibration images (the better start)
PLAN_ACT = {"passes": [{"pass": "prune_channels", "ratio": 0.5, "criterion": "activation"}]}
CALIBRATION_IMAGES = 256
VAL_SIZE = 1000
SEED = 0
MAX_GAP = 3.0  # done-criterion: KD student within this many points of the teacher
# Longer budgets for rows (a) and (b): how many epochs the 3-point goal takes with this recipe
CURVE_EPOCHS = (15, 30)
NOISE = 0.01  # differences below one point between single-seed runs are noise (see NOTES)

# The recipe of the KD rows: the product defaults (what `onnxcompress finetune --epochs 5` runs:
# KD hinton + attention); the CE row is the same with kinds=() (cross-entropy alone).
RECIPE = FinetuneConfig(epochs=5, kd=KDConfig(kinds=("hinton", "attention")), seed=SEED, threads=1)

FMNIST_TEACHER_CMD = (
    "python -m onnxcompress.models.train --arch demo_cnn --data ../shared/realdata/data/fashion_mnist_train.npz "
    "--val-data ../shared/realdata/data/fashion_mnist_test.npz --epochs 6 --seed 0 --threads 1 "
    "-o models/data/demo_teacher.onnx"
)


def top1(model: onnx.ModelProto, data: Dataset) -> float:
    return metrics.top1(api.predict(model, data.x), data.y)


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _fmnist_row() -> list[object]:
    from onnxcompress.models.demo import demo_teacher_path

    path = demo_teacher_path()
    model = load_model(path)
    test = load_data(REALDATA / "data" / "fashion_mnist_test.npz", InputSpec.from_model(model), Preprocess.from_model(model))
    acc = top1(model, test)
    return ["Fashion-MNIST demo teacher (models/data/demo_teacher.onnx)", "trained by models/train.py on the full 60k training set (6 epochs, SGD)",
            "6", "—", pct(acc), "—", "—", "—"]


def run(quick: bool = False, epochs: int | None = None, curve: tuple[int, ...] | None = None) -> str:
    require_realdata()
    epochs = epochs or (1 if quick else RECIPE.epochs)
    curve = () if quick else (CURVE_EPOCHS if curve is None else curve)
    test_limit = 2000 if quick else None
    recipe = dataclasses.replace(RECIPE, epochs=epochs)
    torch.set_num_threads(1)

    pre = Preprocess(scale=1.0)  # raw 0..255 pixels, mean 0, std 1
    teacher = canonicalize(load_model(RESNET8))
    spec = InputSpec.from_model(teacher)
    full = load_data(CIFAR_TRAIN, spec, pre)
    train = full.head(len(full) - VAL_SIZE)
    val = full.take(np.arange(len(full) - VAL_SIZE, len(full)))
    test = load_data(CIFAR_TEST, spec, pre, limit=test_limit)

    # calibration: the first CALIBRATION_IMAGES of the training file (all in the training part)
    t0 = time.perf_counter()
    student = api.apply(RESNET8, PLAN_ACT, data=CIFAR_TRAIN, preprocess=pre, calib_size=CALIBRATION_IMAGES, seed=SEED)
    prune_s = time.perf_counter() - t0
    student_l1 = api.apply(RESNET8, PLAN, data=CIFAR_TRAIN, preprocess=pre, calib_size=CALIBRATION_IMAGES, seed=SEED)
    teacher_acc = top1(teacher, test)
    student_acc, student_l1_acc = top1(student, test), top1(student_l1, test)
    print(f"teacher top-1 {pct(teacher_acc)}, pruned student {pct(student_acc)} (activation, pruned in {prune_s:.1f} s), "
          f"{pct(student_l1_acc)} (l1)", flush=True)

    kd_label, ce_label = "(a) student 50 %, activation criterion", "(b) student 50 %, activation criterion"
    runs: list[tuple[str, str, onnx.ModelProto, FinetuneConfig, float]] = [
        (kd_label, "KD hinton+attention +CE", student, recipe, student_acc),
        (ce_label, "CE only", student, dataclasses.replace(recipe, kd=KDConfig(kinds=())), student_acc),
        ("(a') student 50 %, default criterion (l1)", "KD hinton+attention +CE", student_l1, recipe, student_l1_acc),
        ("(c) teacher (unpruned)", "KD hinton+attention +CE", teacher, recipe, teacher_acc),
    ]
    for more in curve:  # the same two recipes with a larger epoch budget
        longer = dataclasses.replace(recipe, epochs=more)
        runs.append((f"{kd_label}, {more} epochs", "KD hinton+attention +CE", student, longer, student_acc))
        runs.append((f"{ce_label}, {more} epochs", "CE only", student, dataclasses.replace(longer, kd=KDConfig(kinds=())), student_acc))
    rows, after = [], {}
    for label, kind, model, config, before in runs:
        print(f"== {label}: {kind}", flush=True)
        tuned, result = finetune(model, teacher, train, val, config, progress=False)
        acc = top1(tuned, test)
        after[label] = (acc, result)
        print(f"   top-1 {pct(before)} -> {pct(acc)}; held-out {pct(result.initial_val_accuracy)} -> "
              f"{pct(result.best_val_accuracy)} (epoch {result.best_epoch}); {result.wall_s:.0f} s", flush=True)
        rows.append([label, kind, f"{result.epochs_run} (best {result.best_epoch})", pct(before), pct(acc),
                     f"{100 * (acc - teacher_acc):+.2f}", _val(result), f"{result.wall_s:.0f}"])
    rows.append(_fmnist_row())

    kd_acc, _ = after[kd_label]
    ce_acc, _ = after[ce_label]
    gap = 100 * (teacher_acc - kd_acc)
    checks = [
        f"KD student within {MAX_GAP:.0f} points of the teacher: {'met' if gap <= MAX_GAP else 'NOT met'} "
        f"(gap {gap:.2f} points: {pct(kd_acc)} vs the teacher's {pct(teacher_acc)}; with the default criterion "
        f"{100 * (teacher_acc - after[runs[2][0]][0]):.2f} points)",
        f"KD beats plain CE with the same budget: {'met' if kd_acc > ce_acc else 'NOT met'} "
        f"({pct(kd_acc)} vs {pct(ce_acc)}, {100 * (kd_acc - ce_acc):+.2f} points"
        + ("; a margin this small is within one-seed noise (~1 point), so it is not evidence that KD helps"
           if abs(kd_acc - ce_acc) < NOISE else "") + ")",
    ]
    for more in curve:
        kd_more, ce_more = after[f"{kd_label}, {more} epochs"][0], after[f"{ce_label}, {more} epochs"][0]
        checks.append(
            f"with {more} epochs instead of {epochs} (not the issue's budget): KD student {pct(kd_more)}, gap "
            f"{100 * (teacher_acc - kd_more):.2f} points ({'within' if 100 * (teacher_acc - kd_more) <= MAX_GAP else 'outside'} "
            f"{MAX_GAP:.0f}); CE only {pct(ce_more)} (KD {100 * (kd_more - ce_more):+.2f} points)"
        )

    command = "python -m bench finetune" + (" --quick" if quick else "")
    text = header("KD fine-tuning of a pruned student (issue 5)", command)
    n_test = len(test)
    text += (
        f"\nMLPerf Tiny ResNet-8, plan `{PLAN_ACT['passes'][0]}` (rows a, b; row a': `{PLAN['passes'][0]}`) with least-squares reconstruction from the first "
        f"{CALIBRATION_IMAGES} training images; fine-tuned on {len(train)} images of cifar10_train10k_jpeg.npz, "
        f"best epoch chosen on the other {len(val)} (held out; the test set is only used for the table); "
        f"top-1 on {n_test} images of cifar10_test_jpeg.npz in onnxruntime. Same seed ({SEED}), budget "
        f"({epochs} epochs, batch {recipe.batch_size}) and data order in every row"
        + (f" but the last {2 * len(curve)}, which give rows (a) and (b) {' and '.join(map(str, curve))} epochs" if curve else "")
        + "; torch and onnxruntime on one "
        f"thread. Recipe (the `finetune` defaults): AdamW, relative lr {recipe.base_lr:g} (lr_scaling=\"{recipe.scaling}\"), cosine decay, "
        f"weight decay 0.01, BatchNorm re-inserted, random crop (reflect pad 4) + flip; KD T={recipe.kd.temperature:g}, "
        f"alpha={recipe.kd.alpha:g} (CE {1 - recipe.kd.alpha:g}), attention beta={recipe.kd.beta:g}.\n"
        f"Teacher top-1 on the test images: {pct(teacher_acc)}. Δ teacher = after − teacher, in points.\n\n"
    )
    text += table(["model", "fine-tuning", "epochs", "top-1 before", "top-1 after", "Δ teacher", "held-out before → best",
                   "wall s"], rows)
    text += f"\n\nFashion-MNIST teacher row: top-1 on the full 10,000-image test set, trained with `{FMNIST_TEACHER_CMD}` " \
            "(see models/data/README.md; wall time of that training: 1511 s on this machine under load).\n"
    text += "\nDone-criteria:\n\n" + "\n".join(f"- {c}" for c in checks) + "\n"
    text += NOTES
    return text


def _val(result: FinetuneResult) -> str:
    return f"{pct(result.initial_val_accuracy)} → {pct(result.best_val_accuracy)}"


NOTES = """
NOTES — what was tried (one seed, 5 epochs on the 9,000 training images, test top-1 on the 10,000
JPEG test images at the best held-out epoch, KD hinton+attention+CE unless stated; differences
below about 1 point are within run-to-run noise and were only kept when the held-out accuracy
moved the same way):

| change (cumulative baseline in bold) | test top-1 | held-out best |
|---|---|---|
| **old defaults** (batch 32, beta 1000), default criterion l1: start 32.4 % | 62.67 | 67.5 |
| criterion l2 (start 35.3 %) | 64.39 | 65.9 |
| criterion apoz (start 37.6 %) | 65.19 | 68.1 |
| **criterion activation** (start 40.7 %) | 65.71 | 68.0 |
| + warm-up 0.5 epoch | 65.89 | 67.6 |
| + lr 1e-2 (relative; default 2e-2) | 64.12 | 67.1 |
| + KD only (alpha 1, no CE) | 64.62 | 66.8 |
| + cutmix (teacher labels the mixed view: function matching) | 63.26 | 66.1 |
| + mixup (idem) | 63.59 | 65.3 |
| + FitNets hints (1×1 adapters) | 65.79 | 68.5 |
| **+ batch 16** | 66.48 | 69.3 |
| batch 16 + lr 3e-2 | 66.95 | 69.0 |
| batch 16 + weight decay 0 | 66.05 | 68.7 |
| batch 16 + T=1 | 66.64 | 69.2 |
| batch 16 + hinton only (no attention) | 67.18 | 68.7 |
| **batch 16 + attention beta 100** (the new defaults) | 67.38 | 71.2 |
| no augmentation (2026-12-03, from the defaults) | 68.14 | 70.8 |
| flip only (no random crop) | 68.00 | 68.8 |
| batch 8 | 67.50 | 71.9 |
| batch 8, no augmentation | 68.22 | 69.4 |
| hints at every ReLU on the teacher's own kept channels (no adapter; normalised MSE), gamma 1 | 67.18 | 70.6 |
| the same, gamma 5 | 65.75 | 68.8 |
| hinton term only on images the teacher labels right (CE on all) | 68.13 | 70.1 |
| the same, 15 epochs (rows below: KD 71.47, CE 72.42) | 71.98 | 75.2 |

Start accuracy (before fine-tuning, 5,000 test images) with the least-squares reconstruction of
passes/reconstruct.py: none 10.1 %, from 256 calibration images 40.7 %, 1,024 44.0 %, 4,096
44.5 % (4x more sampled rows per layer: 46.8 % at 4,096, 14 s); fitting each ReLU-fed layer only
where the teacher or the student output is positive (two rounds) 38.2 %: worse, not kept.

Kept as product defaults: batch 16 (FinetuneConfig) and attention beta 100 (KDConfig). Not kept:
mixup/cutmix (now an option, `mix=`; function matching needs long schedules — Beyer et al. train
for hundreds of epochs — and in 5 epochs the harder inputs only slow the student down), warm-up,
other learning rates, KD-only, hints, T=1, no weight decay. The prune criterion is the plan's
choice (`"criterion": "activation"`), not the trainer's; the `prune_channels` default (l1) was left
alone (not this change's code), hence row (a') with the issue's literal plan. BatchNorm
"recalibration" before fine-tuning is what the trainer already does: the re-inserted BatchNorms
start as the identity at the student's own measured statistics, and train mode uses batch
statistics, so re-estimating them again changes nothing.

Why the 3-point goal is out of reach in this budget: the student keeps a quarter of the weights
and still underfits after 5 epochs (training accuracy on augmented batches ~65 %, held-out
accuracy still rising in the last epoch in most runs), and every recipe change above moved the
result by at most ~1 point once the start was fixed. The start matters more (l1 32 % -> activation
41 %: +3 points after fine-tuning), but even the best start is 35 points below the teacher.
The longer rows measure the budget it takes: the same recipe reaches 71.5 % at 15 epochs and
73.2 % at 30 (2.2 points from the teacher: the goal is met between 15 and 30 epochs, ~7 min of
one core at 30), so the goal is a matter of epochs, not of a missing piece of the recipe.

KD vs CE: the CE-only student is as good on the test set (67.29 % vs KD's 67.38 %; CE alone was
not measured with the old defaults): the "KD beats CE" line is met only by a margin inside
one-seed noise. KD's held-out accuracy is higher (71.2 % vs 68.2 %) but the 1,000 held-out images have a
standard error of ~1.4 points. With longer budgets CE is ahead (72.42 vs 71.47 % at 15 epochs,
74.11 vs 73.24 % at 30): this teacher was trained on lossless CIFAR-10 and labels only ~82 % of
the JPEG training images right (held-out 81.9 %), so its soft targets carry its JPEG errors while
the labels are right; distilling only the images it labels right did not change that (71.98 % at 15).
A second training seed at 5 epochs (seed 1, same student): KD 67.45 %, CE 67.64 %: at this budget
KD and CE tie (+0.09 and -0.19 points on the two seeds). Row (c): the unpruned teacher itself gains ~4.6 points from the
same 5 epochs on JPEG training images (it was trained on lossless CIFAR-10), so part of any
student's recovery is JPEG adaptation, not distillation.

Demo check with the new defaults (`onnxcompress demo`, Fashion-MNIST, once): student 94.00 % vs
the teacher's 94.20 % (-0.20 points) at 0.325x MACs, 2.65x faster at batch 32, 2 min 40 s wall:
within the demo's 1 point / ~1/3 MACs / 10 min requirement.
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench finetune")
    p.add_argument("--quick", action="store_true", help="1 epoch, 2,000 test images")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--curve", default=None, help="comma-separated longer epoch budgets for rows (a) and (b) "
                   f"(default {','.join(map(str, CURVE_EPOCHS))}; 'none' to skip; skipped with --quick)")
    args = p.parse_args(argv)
    curve = None if args.curve is None else (() if args.curve == "none" else tuple(int(e) for e in args.curve.split(",")))
    path = write_result("finetune", run(args.quick, args.epochs, curve))
    print(path.read_text())


if __name__ == "__main__":
    main()
