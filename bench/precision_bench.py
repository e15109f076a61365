"""Fine-tuning arithmetic: float32 against bfloat16 (`--train-precision`), side by side in one run.

    python -m bench precision [--quick] [--images N] [--epochs E]

The CIFAR ResNets of ../shared/realdata with fixed plans (the kind of students compress picks for
them at macs=0.5 and 0.33: residual blocks removed, a few widths cut), each fine-tuned from the
same pruned start, with the same data, seed and recipe (compress's: pipeline.finetune_config for
a large data set, batch 64 on every core, KD hinton + attention), once in float32 and once in
bf16 (torch autocast + channels-last: compiler/device.py resolve_precision). Reported: training
seconds per epoch and per image, agreement with the teacher on 1,000 held-out training images
(what compress judges on), lossless test top-1 on the 1,000 test images, and McNemar's test
between the two students on those images. The teacher's forward pass runs in onnxruntime in
both (compiler/teacher_runner.py), so the speed-up is of the whole training step, not of the
student's convolutions alone.

Data: images 1000 .. 1000+N of cifar10_train_lossless.npz to train on (default N=10,000), the
first 1,000 held out; calibration (the plans' least-squares refit): the first 256 training
images. Quick: N=2,000 and 1 epoch, ResNet-20 only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import REALDATA, header, require_realdata, table, write_result
from bench.peers_bench import mcnemar

TRAIN = REALDATA / "data" / "cifar10_train_lossless.npz"
TEST = REALDATA / "data" / "cifar10_test_first1000_lossless.npz"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HELD_OUT = 1000
# students of the kind compress picks (bench/results/anchors_run.md): blocks removed, widths cut
PLANS = {
    "resnet20": {"passes": [*({"pass": "remove", "block": b} for b in ("b2", "b5", "b13", "b16")),
                            {"pass": "prune_channels", "groups": {"g13": 48, "g4": 16}, "criterion": "activation", "reconstruct": True}]},
    "resnet56": {"passes": [{"pass": "remove", "block": b} for b in ("b17", "b26", "b31", "b37", "b40", "b43", "b46", "b49", "b52")]},
}


def run_model(key: str, images: int, epochs: int) -> tuple[list[list[str]], str]:
    from onnxcompress.compiler.data import InputSpec, Preprocess, load_data
    from onnxcompress.compiler.onnx_io import canonicalize, load_model
    from onnxcompress.compiler.cost import model_cost
    from onnxcompress.compiler.runtime import make_session, run_batched
    from onnxcompress.compiler.trainer import finetune
    from onnxcompress.passes import Plan, apply_plan
    from onnxcompress.pipeline import finetune_config

    teacher = canonicalize(load_model(REALDATA / "models" / f"cifar10_{key}_akamaster.onnx"))
    pre = Preprocess(scale=1 / 255, mean=MEAN, std=STD)
    spec = InputSpec.from_model(teacher)
    data = load_data(TRAIN, spec, pre, limit=HELD_OUT + images)
    train, val = data.take(np.arange(HELD_OUT, len(data))), data.take(np.arange(HELD_OUT))
    test = load_data(TEST, spec, pre)
    start = apply_plan(teacher, Plan.from_json(PLANS[key]), calibration=train.x[:256], seed=0)
    macs = model_cost(start).macs / model_cost(teacher).macs
    def predict(model, data):  # noqa: ANN001, ANN202 - one session per model, both image sets
        session = make_session(model)
        return [run_batched(session, d.x).reshape(len(d), -1).argmax(1) for d in data]

    val_ref, teacher_pred = predict(teacher, (val, test))
    teacher_top1 = float((teacher_pred == test.y).mean())
    rows, correct = [], {}
    for precision in ("fp32", "bf16"):
        config = finetune_config(epochs, 0, None, "cpu", samples=50_000, precision=precision)  # compress's large-data recipe
        t0 = time.perf_counter()
        student, result = finetune(start, teacher, train, None, config, progress=False)
        wall = time.perf_counter() - t0
        train_s = sum(h.train_seconds for h in result.history)
        pred, val_pred = predict(student, (test, val))
        agree = float((val_pred == val_ref).mean())
        correct[precision] = pred == test.y
        rows.append([key, f"{macs:.3f}x", precision, f"{train_s / epochs:.0f}", f"{1000 * train_s / (epochs * len(train)):.2f}",
                     f"{wall:.0f}", f"{100 * agree:.1f}", f"{100 * correct[precision].mean():.1f}"])
    n01, n10, p = mcnemar(correct["bf16"], correct["fp32"])
    speed = float(rows[0][4]) / float(rows[1][4])
    verdict = (f"{key}: bf16 trains {speed:.2f}x as fast per image; lossless top-1 {100 * (correct['bf16'].mean() - correct['fp32'].mean()):+.1f} "
               f"points vs float32 (McNemar p={p:.2g}: {n01} images only bf16 gets right, {n10} only float32); teacher {100 * teacher_top1:.1f} %.")
    return rows, verdict


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench precision", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="ResNet-20, 2,000 images, 1 epoch")
    p.add_argument("--images", type=int, default=None, help="training images (default 10,000)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default 2)")
    args = p.parse_args(argv)
    require_realdata()
    from onnxcompress.compiler.device import native_bf16

    images = args.images or (2000 if args.quick else 10_000)
    epochs = args.epochs or (1 if args.quick else 2)
    models = ["resnet20"] if args.quick else ["resnet20", "resnet56"]
    command = "python -m bench precision" + (" --quick" if args.quick else "") + (f" --images {args.images}" if args.images else "") + (
        f" --epochs {args.epochs}" if args.epochs else "")
    rows, verdicts = [], []
    for key in models:
        r, v = run_model(key, images, epochs)
        rows += r
        verdicts.append(v)
    text = header("Fine-tuning in float32 and bf16 (--train-precision)", command)
    text += (f"\nThis CPU {'has' if native_bf16('cpu') else 'does NOT have'} native bf16 (AVX512-BF16 or AMX), so "
             f"`--train-precision auto` takes {'bf16' if native_bf16('cpu') else 'float32'} here. {images:,} training images, "
             f"{epochs} epoch{'s' if epochs != 1 else ''}, batch 64 on every core, KD hinton + attention, seed 0; the same pruned start "
             "for both rows of a model.\n\n")
    text += table(["model", "student MACs", "precision", "train s / epoch", "ms / image", "wall s", "val agreement % (1000)",
                   "lossless top-1 % (1000)"], rows)
    text += "\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n"
    text += ("\nOne seed each; the standard error of a top-1 near 90 % on 1,000 images is ~0.9 points, so the paired McNemar "
             "p-value is the test of a difference. On a CPU without native bf16, torch emulates it (slower than float32): "
             "`auto` keeps float32 there.\n")
    write_result("precision_quick" if args.quick else "precision", text)


if __name__ == "__main__":
    main()
