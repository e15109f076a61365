"""Anchor benchmark (issue #17 item 2): the CIFAR ResNets of the compression literature.

    python -m bench anchors [--quick] [--models resnet20,resnet56] [--targets 0.5,0.33]
                            [--train-images N] [--epochs E] [--episodes N] [--epochs-curve 1,2,4] [--seed S]

The akamaster ResNet-20/56 (../shared/realdata, the original He et al. CIFAR ResNets with option-A
shortcuts, BN folded) at macs=0.5 and macs=0.33, one table per model and target. Every row gets the
same data and the same fine-tuning budget:

1. teacher, as delivered;
2. teacher, fine-tuned with the budget (what fine-tuning alone does);
3. uniform L1 + refit (bench.peers_bench.uniform_l1_row: one ratio bisected on the exact cost model,
   prune_channels criterion l1 with least-squares reconstruction), then fine-tuned;
4. Torch-Pruning (the `bench` extra: pip install torch-pruning) on a PyTorch definition of the
   akamaster ResNet with BN folded into the convs (weights copied from the ONNX initializers in
   execution order, checked against onnxruntime to 1e-3), MetaPruner + GroupMagnitudeImportance(p=2),
   global_pruning True and False, iterative small steps until the MACs target; Torch-Pruning
   mis-traces the option-A F.pad (SOURCES.md), so the documented workaround ignores the stem conv,
   every block's second conv and the Linear (inner channels only); exported to ONNX and fine-tuned;
5. onnxcompress as a user runs it: `compress()` with the default agent;
6. onnxcompress with `reinforce`.

The fine-tuning budget: compress decides its own epochs by default. The onnxcompress default row
of each model runs first, and the epochs its report says it fine-tuned with become every other
row's budget (`--epochs E` instead passes finetune_epochs=E to compress and so to every row). All
rows fine-tune with compress's recipe (pipeline.finetune_config) on the split compress makes of
--data (1000 validation images held out with the run's seed); as these teachers were trained on the
CIFAR-10 training images, compress judges on agreement with the teacher there, and so does every
row here (early stopping, "val" column, choosing the best peer). Test images (the 1000 lossless
ones, the JPEG 10k) are only ever measured.

`--epochs-curve 1,2,4`: the onnxcompress default student (its plan replayed on the teacher) and the
best peer's pruned model (by validation agreement) are fine-tuned again from their untrained pruned
start for each epoch count: lossless top-1 against epochs.

Quick mode (`python -m bench all --quick`): ResNet-20 only, macs=0.5 only, --train-images 5000,
1 epoch, 8 episodes, the first 2000 JPEG test images. Writes bench/results/anchors.md + anchors.png
(quick: anchors_quick.md + anchors_quick.png).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from bench import peers_bench as peers
from bench.common import REALDATA, RESULTS, header, require_realdata, table, write_result
from bench.peers_bench import Row, copy_onnx_weights, mcnemar

MODELS = {
    "resnet20": ("cifar10_resnet20_akamaster.onnx", "ResNet-20 (akamaster, CIFAR-10)", 3),
    "resnet56": ("cifar10_resnet56_akamaster.onnx", "ResNet-56 (akamaster, CIFAR-10)", 9),
}
TRAIN = REALDATA / "data" / "cifar10_train_lossless.npz"
TEST_LOSSLESS = REALDATA / "data" / "cifar10_test_first1000_lossless.npz"
TEST_JPEG = REALDATA / "data" / "cifar10_test_jpeg.npz"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # SOURCES.md: upstream trainer.py
TARGETS = (0.5, 0.33)
QUICK = {"models": ["resnet20"], "targets": (0.5,), "train_images": 5000, "epochs": 1, "episodes": 8, "jpeg": 2000}
SEARCH_WORKERS = 2  # a process pool for the search's evaluations: same results as 1 worker (bench/results/search.md)

TEACHER, TEACHER_FT, L1 = peers.TEACHER, peers.TEACHER_FT, peers.L1
TP_GLOBAL = "Torch-Pruning (global, inner channels)"
TP_LOCAL = "Torch-Pruning (per-layer, inner channels)"
OC_REINFORCE = "onnxcompress reinforce"
PEERS = (L1, TP_GLOBAL, TP_LOCAL)

# published ResNet-56 / CIFAR-10 results near 2x MACs (issue #17; speed-up = MACs ratio)
PUBLISHED = [
    ("AMC (He et al. 2018)", "92.8 → 91.9", "-0.9", "2.0x"),
    ("CP (He et al. 2017)", "—", "-1.0", "2.0x"),
    ("SFP (He et al. 2018)", "—", "+0.23", "2.11x"),
    ("ResRep (Ding et al. 2021)", "—", "0.00", "2.12x"),
    ("Torch-Pruning / DepGraph group pruning (Fang et al. 2023)", "93.53 → 93.91", "+0.38", "2.13x"),
]


# =============================================================================================
# ADAPTER: every call into the product's pipeline / config / report API is in this section
# (onnxcompress.{pipeline,config,report}; the pipeline's compress() takes a CompressConfig).
# bench.peers_bench's helpers (uniform_l1_row, _finetune, measure) carry their own imports.
# =============================================================================================


def product_val_calib_sizes() -> tuple[int, int]:
    from onnxcompress.config import CompressConfig

    fields = CompressConfig.__dataclass_fields__
    return fields["val_size"].default, fields["calib_size"].default


def prepare_job(teacher: onnx.ModelProto, train_path: Path, preprocess, seed: int):
    """(JobData, measure kind) exactly as compress() prepares them from --data alone: the same
    held-out validation images, calibration images and measure (agreement with the teacher when
    the teacher fits the validation images)."""
    from onnxcompress import pipeline
    from onnxcompress.compiler.runtime import make_session, run_batched

    val_size, calib_size = product_val_calib_sizes()
    job = pipeline.prepare_data(teacher, train_path, None, preprocess, None, val_size, calib_size, seed)
    scores = run_batched(make_session(teacher), job.val.x)
    job, measure = pipeline._choose_measure(job, scores, scores.reshape(len(scores), -1).argmax(1), False, False)
    return job, measure.kind


@dataclass
class CompressOutcome:
    model: onnx.ModelProto
    plan: dict
    agent: str
    episodes: int
    evaluations: int
    search_s: float
    finetune_s: float
    finetune_epochs: int
    val: float | None
    search_val: float | None
    note: str


def run_compress(teacher_path: Path, train_path: Path, target: float, agent: str | None, episodes: int | None,
                 epochs: int | None, seed: int, preprocess) -> CompressOutcome:
    """compress() as a user calls it: --data only (no --val-data), the default agent when `agent`
    is None, compress's own fine-tuning epochs when `epochs` is None."""
    from onnxcompress.config import CompressConfig
    from onnxcompress.pipeline import compress

    kwargs = {} if epochs is None else {"finetune_epochs": epochs}
    config = CompressConfig.from_options(f"macs={target}", agent=agent, episodes=episodes, seed=seed, progress=False,
                                         workers=SEARCH_WORKERS, **kwargs)
    result = compress(teacher_path, train_path, config, preprocess=preprocess)
    s, r = result.students[0], result.report
    return CompressOutcome(s.model, s.plan.to_json(), r.agent, r.episodes, r.evaluations, r.search_wall_s,
                           r.finetune_wall_s, r.finetune_epochs, s.metrics.accuracy, s.search_accuracy, s.note)


# =============================================================================================
# data, teachers
# =============================================================================================


def preprocess():
    from onnxcompress.compiler.data import Preprocess

    return Preprocess(scale=1 / 255, mean=MEAN, std=STD)


@dataclass
class Bench:
    key: str
    task: peers.Task  # the peers benchmark's task (teacher, job, test = the lossless 1000)
    jpeg: object  # Dataset
    rows: list[Row] = field(default_factory=list)
    starts: dict = field(default_factory=dict)  # (method, target) -> pruned model before fine-tuning
    plans: dict = field(default_factory=dict)  # target -> onnxcompress default plan
    curves: dict = field(default_factory=dict)  # target -> [(epochs, {method: (lossless, jpeg, val)})]
    jpeg_top1: dict = field(default_factory=dict)  # id(row) -> top-1
    measure_kind: str = "top1"  # compress's validation measure: "agreement" when the teacher fits its images
    seed: int = 0
    failures: list = field(default_factory=list)
    before: dict = field(default_factory=dict)  # (method, target) -> validation measure before fine-tuning


def load_bench(key: str, workdir: Path, train_images: int, jpeg_limit: int | None, seed: int) -> Bench:
    from onnxcompress.compiler.data import InputSpec, load_data
    from onnxcompress.compiler.onnx_io import canonicalize, load_model

    path = REALDATA / "models" / MODELS[key][0]
    teacher = canonicalize(load_model(path))
    with np.load(TRAIN) as d:
        n = len(d["y"])
        if train_images >= n:
            train_path = TRAIN
        else:
            train_path = workdir / f"train_first{train_images}.npz"
            np.savez(train_path, x=d["x"][:train_images], y=d["y"][:train_images])
    pre = preprocess()
    job, kind = prepare_job(teacher, train_path, pre, seed)
    spec = InputSpec.from_model(teacher)
    test = load_data(TEST_LOSSLESS, spec, pre)
    jpeg = load_data(TEST_JPEG, spec, pre, limit=jpeg_limit)
    task = peers.Task(key, MODELS[key][1], path, teacher, pre, Path(train_path), None, job, test, TEST_LOSSLESS.name)
    return Bench(key, task, jpeg, measure_kind=kind, seed=seed)


# =============================================================================================
# Torch-Pruning on the akamaster ResNet
# =============================================================================================


def akamaster_resnet(blocks_per_stage: int):
    """The akamaster CIFAR ResNet with BN folded (convs with bias): option-A shortcuts
    (x[:, :, ::2, ::2], then zero channels padded on both sides)."""
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, planes: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=True)
            self.pad = planes // 4 if stride != 1 or cin != planes else 0

        def forward(self, x):
            out = self.conv2(F.relu(self.conv1(x)))
            short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0) if self.pad else x
            return F.relu(out + short)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=True)
            layers, cin = [], 16
            for planes, stride in ((16, 1), (32, 2), (64, 2)):
                for i in range(blocks_per_stage):
                    layers.append(Block(cin, planes, stride if i == 0 else 1))
                    cin = planes
            self.blocks = nn.Sequential(*layers)
            self.linear = nn.Linear(64, 10)

        def forward(self, x):
            out = self.blocks(F.relu(self.conv1(x)))
            out = F.avg_pool2d(out, out.size()[3])
            return self.linear(out.view(out.size(0), -1))

    return ResNet()


def torch_teacher(b: Bench):
    """The PyTorch akamaster ResNet carrying the ONNX teacher's weights (Conv/Gemm initializers in
    execution order, each shape checked), verified against onnxruntime on real test images."""
    import torch

    from onnxcompress.compiler.runtime import make_session, run_batched

    model = onnx.load(str(b.task.teacher_path))
    module = akamaster_resnet(MODELS[b.key][2])
    copy_onnx_weights(module, model, (1, 3, 32, 32), b.task.teacher_path.name)
    module.eval()
    x = np.asarray(b.task.test.x[:16])
    expected = run_batched(make_session(b.task.teacher), x)
    with torch.no_grad():
        got = module(torch.from_numpy(np.array(x))).numpy()
    err = float(np.abs(got - expected).max() / max(1e-12, np.abs(expected).max()))
    if err > 1e-3:
        raise RuntimeError(f"the PyTorch {b.key} does not reproduce the ONNX teacher (relative error {err:.1e})")
    return module


def torch_pruning_row(b: Bench, target: float, epochs: int, seed: int, global_pruning: bool) -> Row:
    import torch
    import torch_pruning as tp

    from onnxcompress.compiler.cost import model_cost
    from onnxcompress.models.export import to_onnx

    module = copy.deepcopy(torch_teacher(b))
    example = torch.zeros(1, 3, 32, 32)
    teacher_macs = peers._torch_macs(module, example)
    # the documented workaround (SOURCES.md): Torch-Pruning ties the option-A pad's channels wrongly,
    # so only the blocks' inner channels (conv1 outputs = conv2 inputs) are pruned
    ignored = [module.conv1, module.linear, *[blk.conv2 for blk in module.blocks]]
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(module, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  global_pruning=global_pruning, pruning_ratio=0.95, iterative_steps=peers.TP_STEPS,
                                  ignored_layers=ignored)
    steps, macs = 0, teacher_macs
    while macs > target * teacher_macs and steps < peers.TP_STEPS:
        pruner.step()
        steps += 1
        macs = peers._torch_macs(module, example)
    prune_s = time.perf_counter() - t0
    module.eval()
    student = to_onnx(module, (1, 3, 32, 32), fold_bn=True, metadata={p.key: p.value for p in b.task.teacher.metadata_props})
    onnx_macs = model_cost(onnx.shape_inference.infer_shapes(student)).macs
    if onnx_macs != macs:
        raise RuntimeError(f"Torch-Pruning student: {macs} MACs in PyTorch but {onnx_macs} in the exported ONNX")
    method = TP_GLOBAL if global_pruning else TP_LOCAL
    b.starts[(method, target)] = student
    inner = [blk.conv1.out_channels for blk in module.blocks]
    before = peers._top1(student, b.task.job.val)
    b.before[(method, target)] = before
    tuned, ft_s, val = peers._finetune(b.task, student, epochs, seed)
    reached = macs / teacher_macs
    detail = (f"{steps} steps, MACs {reached:.3f}x{'' if reached <= target else ' (target NOT reached: inner-only pruning saturates)'}; "
              f"inner widths {inner}; val before fine-tuning {100 * before:.1f} %")
    return Row(method, target, tuned, prune_s, ft_s, val, detail)


# =============================================================================================
# the other rows
# =============================================================================================


@contextlib.contextmanager
def _capture_start(sink: list):
    """peers.uniform_l1_row fine-tunes inside; this keeps the student it hands to the trainer
    (its untrained pruned start, for --epochs-curve)."""
    original = peers._finetune

    def capturing(task, student, epochs, seed):
        sink.append(student)
        return original(task, student, epochs, seed)

    peers._finetune = capturing
    try:
        yield
    finally:
        peers._finetune = original


def l1_row(b: Bench, target: float, epochs: int, seed: int) -> Row:
    sink: list = []
    with _capture_start(sink):
        row = peers.uniform_l1_row(b.task, target, epochs, seed)
    b.starts[(L1, target)] = sink[0]
    b.before[(L1, target)] = peers._top1(sink[0], b.task.job.val)
    return row


def onnxcompress_row(b: Bench, target: float, agent: str | None, episodes: int | None, epochs: int | None, seed: int) -> tuple[Row, int]:
    out = run_compress(b.task.teacher_path, b.task.train_path, target, agent, episodes, epochs, seed, b.task.preprocess)
    method = f"onnxcompress (default: {out.agent})" if agent is None else f"onnxcompress {out.agent}"
    detail = f"{out.episodes} episodes, {out.evaluations} evaluations; plan {peers._short_plan(out.plan)}"
    if out.search_val is not None:
        detail += f"; val before fine-tuning {100 * out.search_val:.1f} %"
    detail += f"; compress: {out.note}"
    if agent is None:
        b.plans[target] = out.plan
    b.before[(method, target)] = out.search_val
    return Row(method, target, out.model, out.search_s, out.finetune_s, out.val, detail), out.finetune_epochs


def replay_default_plan(b: Bench, target: float) -> onnx.ModelProto:
    from onnxcompress.passes import Plan, apply_plan

    return apply_plan(b.task.teacher, Plan.from_json(b.plans[target]), calibration=b.task.job.calibration, seed=b.seed)


# =============================================================================================
# measurement, tables, plot
# =============================================================================================


def jpeg_top1(b: Bench, model: onnx.ModelProto) -> float:
    from onnxcompress.compiler.runtime import make_session, run_batched

    pred = run_batched(make_session(model), b.jpeg.x).reshape(len(b.jpeg), -1).argmax(1)
    return float((pred == b.jpeg.y).mean())


def _is_ours(r: Row) -> bool:
    return r.method.startswith("onnxcompress")


def model_table(b: Bench, target: float, epochs: int) -> str:
    teacher = b.rows[0]

    def kept(r: Row) -> str:
        # the trainer returns the best weights on the validation measure, the untouched start included
        before = b.before.get((r.method, r.target))
        return ", kept start" if before is not None and r.val_top1 is not None and abs(before - r.val_top1) < 1e-6 else ""

    rows = [r for r in b.rows if r.target is None or r.target == target]
    out = []
    for r in rows:
        n01, n10, p = mcnemar(r.correct, teacher.correct)
        vs = "—" if r is teacher else f"{100 * (r.test_top1 - teacher.test_top1):+.1f} (p={p:.2g})"
        out.append([
            r.method,
            f"{100 * r.test_top1:.1f}",
            vs,
            f"{100 * b.jpeg_top1[id(r)]:.2f}",
            "—" if r.val_top1 is None else f"{100 * r.val_top1:.1f}",
            f"{r.macs / teacher.macs:.3f} ({r.macs / 1e6:.1f} M)",
            f"{r.params / teacher.params:.3f}",
            f"{r.file_bytes / teacher.file_bytes:.3f} ({r.file_bytes / 1024:.0f} KiB)",
            f"{1 / r.b1:.2f}x",
            f"{1 / r.b32:.2f}x",
            f"{1 / r.b32_cpu:.2f}x",
            peers._fmt_s(r.search_s) if r.search_s else "—",
            (peers._fmt_s(r.finetune_s) + f" ({epochs} ep{kept(r)})") if r.finetune_s else "—",
        ])
    return table(
        ["method", f"lossless top-1 % ({len(b.task.test)})", "vs teacher, McNemar p", f"JPEG top-1 % ({len(b.jpeg)})",
         "val agreement %" if b.measure_kind == "agreement" else "val top-1 %", "MACs", "params", "file", "speed-up b1", "speed-up b32", "b32 re-timed", "search s", "fine-tune s"],
        out,
    )


def verdict(b: Bench, target: float) -> str:
    at = [r for r in b.rows if r.target == target]
    ours = [r for r in at if _is_ours(r)]
    theirs = [r for r in at if r.method in PEERS]
    if not ours or not theirs:
        return "Comparison: a row is missing."
    # chosen on the validation images (agreement with the teacher), never on the test images
    best_ours = max(ours, key=lambda r: r.val_top1 or 0.0)
    best_peer = max(theirs, key=lambda r: r.val_top1 or 0.0)
    _, _, p = mcnemar(best_ours.correct, best_peer.correct)
    d = 100 * (best_ours.test_top1 - best_peer.test_top1)
    sp = (1 / best_ours.b32) / (1 / best_peer.b32)
    return (f"Best onnxcompress row by validation agreement: {best_ours.method}; best peer: {best_peer.method}. "
            f"Lossless top-1 {d:+.1f} points (McNemar p={p:.2g}), batch-32 speed {sp:.2f}x the peer's.")


def curve_table(b: Bench, target: float) -> str:
    curve = b.curves.get(target)
    if not curve:
        return ""
    methods = list(curve[0][1])
    rows = [[str(e)] + [f"{100 * res[m][0]:.1f} / {100 * res[m][1]:.2f}" for m in methods] for e, res in curve]
    text = table(["fine-tune epochs"] + [f"{m}: lossless / JPEG top-1 %" for m in methods], rows)
    ours, peer = methods
    gaps = [(e, 100 * (res[ours][0] - res[peer][0])) for e, res in curve]
    (e0, g0), (e1, g1) = gaps[0], gaps[-1]
    listed = ", ".join(f"{e} ep: {g:+.1f}" for e, g in gaps)
    if g1 >= 0:
        close = f"at {e1} epochs onnxcompress is {g1:+.1f} points vs the peer ({listed}): no gap at that budget."
    elif e1 > e0 and g1 > g0:
        # extrapolated linearly in log2(epochs): a guess to be checked with longer runs, not a measurement
        per_doubling = (g1 - g0) / np.log2(e1 / e0)
        need = e1 * 2 ** (-g1 / per_doubling)
        close = (f"the gap ({listed} points) narrows by {per_doubling:.1f} points per doubling of the epochs; "
                 f"extrapolated at that rate it would close near {need:.0f} epochs (an extrapolation, not measured): "
                 "more fine-tuning, or a plan closer to the peer's (which channels are kept), would close it.")
    else:
        close = (f"the gap ({listed} points) does not narrow with epochs: more fine-tuning alone does not close it; "
                 "the pruned structure (the plan) is what differs.")
    sem = 100 * np.sqrt(0.9 * 0.1 / len(b.task.test))
    return (text + f"\n\nEach from the untrained pruned start, same recipe and seed. {close[0].upper() + close[1:]} "
            f"(one seed; the standard error of a top-1 near 90 % on {len(b.task.test)} images is ~{sem:.1f} points.)\n")


def plot(benches: list[Bench], targets: tuple[float, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(b, t) for b in benches for t in targets]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.8), squeeze=False)
    markers = "o^v<>sPDX*"
    for ax, (b, t) in zip(axes[0], panels):
        rows = [r for r in b.rows if r.target is None or r.target == t]
        for i, r in enumerate(rows):
            ax.scatter(1 / r.b32, 100 * r.test_top1, marker=markers[i % len(markers)], s=50, label=r.method)
        ax.axhline(100 * b.rows[0].test_top1, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("measured speed-up at batch 32 (onnxruntime, teacher / student)")
        ax.set_ylabel(f"top-1 % (lossless, {len(b.task.test)} test images)")
        ax.set_title(f"{MODELS[b.key][1]}, macs={t:g}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# =============================================================================================
# the run
# =============================================================================================


def run_model(b: Bench, targets, epochs_arg: int | None, episodes: int | None, seed: int, curve_epochs: list[int], quick: bool, log) -> int:
    try:
        import torch_pruning  # noqa: F401

        have_tp = True
    except ImportError:
        have_tp = False
        log("torch-pruning is not installed (pip install torch-pruning, the bench extra): its rows are left out")
    b.rows.append(Row(TEACHER, None, b.task.teacher))
    epochs = None
    pending = []
    for target in targets:
        # 1. onnxcompress as a user runs it; its report's fine-tuning epochs are the budget of every row
        r0 = time.perf_counter()
        row, used = onnxcompress_row(b, target, None, episodes, epochs_arg, seed)
        if epochs is None:
            epochs = used
        elif used != epochs:
            raise RuntimeError(f"compress fine-tuned {used} epochs at macs={target}, {epochs} before")
        log(f"[{b.key}] macs={target:g} {row.method}: val {row.val_top1}, {time.perf_counter() - r0:.0f} s; budget {epochs} epochs")
        pending.append(row)
    tuned, ft_s, val = peers._finetune(b.task, b.task.teacher, epochs, seed)
    b.rows.append(Row(TEACHER_FT, None, tuned, 0.0, ft_s, val))
    b.before[(TEACHER_FT, None)] = peers._top1(b.task.teacher, b.task.job.val)
    log(f"[{b.key}] {TEACHER_FT}: val {val}, {ft_s:.0f} s")
    for target, ours in zip(targets, pending):
        makers = [(L1, lambda: l1_row(b, target, epochs, seed))]
        if have_tp:
            makers += [(TP_GLOBAL, lambda: torch_pruning_row(b, target, epochs, seed, True)),
                       (TP_LOCAL, lambda: torch_pruning_row(b, target, epochs, seed, False))]
        makers.append((OC_REINFORCE, lambda: onnxcompress_row(b, target, "reinforce", episodes, epochs, seed)[0]))
        b.rows.append(ours)
        for label, make in makers:
            r0 = time.perf_counter()
            try:
                row = make()
            except Exception as e:  # a peer that fails is reported, never faked
                log(f"[{b.key}] macs={target:g} {label} FAILED: {type(e).__name__}: {e}")
                b.failures.append(f"{label} @ macs={target:g}: {type(e).__name__}: {e}")
                continue
            b.rows.append(row)
            log(f"[{b.key}] macs={target:g} {row.method}: val {row.val_top1}, search {row.search_s:.0f} s, "
                f"fine-tune {row.finetune_s:.0f} s ({time.perf_counter() - r0:.0f} s) {row.detail}")
    peers.measure(b.task, b.rows, rounds=3 if quick else 7)
    for r in b.rows:
        b.jpeg_top1[id(r)] = jpeg_top1(b, r.model)
    if curve_epochs:
        for target in targets:
            run_curve(b, target, curve_epochs, seed, log)
    return epochs


def run_curve(b: Bench, target: float, curve_epochs: list[int], seed: int, log) -> None:
    from onnxcompress.compiler.runtime import make_session, run_batched

    peers_at = [r for r in b.rows if r.target == target and r.method in PEERS and (r.method, target) in b.starts]
    if target not in b.plans or not peers_at:
        log(f"[{b.key}] macs={target:g}: no epochs curve (a row is missing)")
        return
    best_peer = max(peers_at, key=lambda r: r.val_top1 or 0.0)
    ours_name = next(r.method for r in b.rows if r.target == target and r.method.startswith("onnxcompress (default"))
    starts = {ours_name: replay_default_plan(b, target), best_peer.method: b.starts[(best_peer.method, target)]}
    curve = []
    for e in curve_epochs:
        res = {}
        for method, start in starts.items():
            tuned, ft_s, val = peers._finetune(b.task, start, e, seed)
            pred = run_batched(make_session(tuned), b.task.test.x).reshape(len(b.task.test), -1).argmax(1)
            res[method] = (float((pred == b.task.test.y).mean()), jpeg_top1(b, tuned), val)
            log(f"[{b.key}] macs={target:g} curve {e} ep {method}: lossless {res[method][0]:.3f}, {ft_s:.0f} s")
        curve.append((e, res))
    b.curves[target] = curve


NOTES = """### Notes

- Torch-Pruning traces the option-A shortcut's `F.pad` as an element-wise op and ties stage-1 channel i to
  stage-2/3 channel i (the true offsets are +8/+16): its `step()` succeeds and the pruned model fails at the
  first forward pass (../shared/realdata/SOURCES.md, peer note). Its rows therefore use the documented
  workaround: the stem conv, every block's second conv and the Linear are ignored, so it prunes the blocks'
  inner channels only and the residual stream keeps its 16/32/64 channels. onnxcompress and uniform L1 prune
  the residual stream as well (the option-A pad is an index map in its analysis). Torch-Pruning restores
  no weights (no refit): its students start far below the others before fine-tuning ("val before").
- Fine-tuning returns the best weights on the validation measure, the untouched start included (compress's
  trainer). With agreement as the measure the teacher scores 100 % on it, so "teacher, fine-tuned" is the
  teacher itself; a student whose fine-tuned epochs never beat its start on validation keeps the start
  ("kept start": inferred from an unchanged validation score).
- Torch-Pruning's two settings: `global_pruning=True` ranks all groups together, `False` prunes every
  group by the same ratio; both MetaPruner + GroupMagnitudeImportance(p=2), ~0.1 % of the channels a step,
  stopped at the first step at or below the MACs target. When inner-only pruning cannot reach a target its
  row says what it reached.
- The teachers were trained on all 50,000 training images, so the validation images compress holds out of
  --data are seen data: compress judges on agreement with the teacher there (it says so), and every row
  here is fine-tuned, early-stopped and compared ("val agreement", choosing the best peer) on that same
  measure. Test images are only measured.
- Lossless top-1 is on the only 1000 lossless CIFAR-10 test images obtainable (standard error ~0.9 points
  near 92 %): the McNemar p-value compares each row with the teacher on the same images. The JPEG column
  is the 10k test set decoded from JPEG q75 (about 10 points below lossless for these teachers).
- Speed-ups are the teacher's onnxruntime time / the student's, CPU time of the single inference thread,
  every model timed in pairs with the teacher in one run (`compare_latency`); "b32 re-timed" is a second
  pairing (`paired_latency`): the two columns differ by the machine's noise. The teacher's own row is a
  noise gauge. Torch-Pruning's students are PyTorch exports (a Pad before strided convs, Slice + Pad
  shortcuts as exported by torch), the others rewrites of the canonicalised teacher: latency also carries
  these exporter differences.
- The published rows are each paper's own numbers (quoted from issue #17), with 100-300 GPU epochs of
  training on all 50k images; their "speed-up" is the MACs ratio, not a measured time. They are context for
  the scale of the losses, not rows of this run.
"""


def run(args) -> tuple[str, str]:
    require_realdata()
    import torch

    torch.set_num_threads(1)
    quick = args.quick
    models = args.models.split(",") if args.models else (QUICK["models"] if quick else ["resnet56", "resnet20"])
    targets = tuple(float(t) for t in args.targets.split(",")) if args.targets else (QUICK["targets"] if quick else TARGETS)
    train_images = args.train_images or (QUICK["train_images"] if quick else 50_000)
    epochs_arg = args.epochs or (QUICK["epochs"] if quick else None)
    episodes = args.episodes or (QUICK["episodes"] if quick else None)
    jpeg_limit = QUICK["jpeg"] if quick else None
    curve_epochs = [int(e) for e in args.epochs_curve.split(",")] if args.epochs_curve else []
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"unknown model '{m}'; choose from {', '.join(MODELS)}")
    command = "python -m bench anchors" + (" --quick" if quick else "")
    for flag, value, default in (("--models", args.models, None), ("--targets", args.targets, None),
                                 ("--train-images", args.train_images, None), ("--epochs", args.epochs, None),
                                 ("--episodes", args.episodes, None), ("--epochs-curve", args.epochs_curve, None),
                                 ("--seed", args.seed, 0)):
        if value != default:
            command += f" {flag} {value}"
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    benches, budget = [], {}
    with tempfile.TemporaryDirectory(prefix="anchors-") as tmp:
        for key in models:
            work = Path(tmp) / key
            work.mkdir()
            b = load_bench(key, work, train_images, jpeg_limit, args.seed)
            log(f"[{key}] {len(b.task.job.train)} train / {len(b.task.job.val)} val ({b.measure_kind}) / "
                f"{len(b.task.test)} lossless / {len(b.jpeg)} JPEG test images; targets {targets}")
            budget[key] = run_model(b, targets, epochs_arg, episodes, args.seed, curve_epochs, quick, log)
            benches.append(b)
            log(f"[{key}] done")
    stem = "anchors_quick" if quick else "anchors"
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(benches, targets, RESULTS / f"{stem}.png")

    title = "Anchors: the CIFAR ResNets of the literature (issue #17)" + (" — QUICK MODE (smoke test)" if quick else "")
    text = header(title, command)
    text += (f"\nonnxcompress code: {peers._product_origin()}. Whole run {(time.perf_counter() - t_start) / 60:.0f} min; "
             f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.\n\n")
    n_train = min(train_images, 50_000)
    text += (
        f"Data: the first {n_train:,} images of cifar10_train_lossless.npz as `--data` for every row (compress holds out "
        f"1000 of them with seed {args.seed} for validation; every other row uses the very same split); top-1 on "
        f"cifar10_test_first1000_lossless.npz (paired with the teacher: McNemar) and on "
        f"{'the first %d images of ' % jpeg_limit if jpeg_limit else 'all 10,000 images of '}cifar10_test_jpeg.npz. "
        f"Preprocessing x/255, mean {MEAN}, std {STD}. "
        "Fine-tuning budget: " + ", ".join(f"{k} {e} epoch{'s' if e != 1 else ''}" for k, e in budget.items()) + " — "
        + ("`--epochs` passed to compress as finetune_epochs and used by every row" if epochs_arg is not None else
           "the epochs compress's own default fine-tuned with (read from its report, its row runs first), given to every row")
        + "; the recipe of compress (AdamW, KD hinton+attention) for every row, one seed. "
        + f"Search: {'%d episodes per agent and target' % episodes if episodes else 'compress defaults (episodes per agent)'}, "
        f"{SEARCH_WORKERS} worker processes.\n"
    )
    text += "\n### Published results (context, not rows of this run): ResNet-56 / CIFAR-10 near 2x MACs\n\n"
    text += table(["method", "base → pruned top-1 %", "Δ points", "speed-up (MACs ratio)", "budget"],
                  [[m, t, d, s, "100-300 GPU epochs on all 50k images"] for m, t, d, s in PUBLISHED]) + "\n"
    for b in benches:
        for target in targets:
            ep = budget[b.key]
            text += f"\n### {MODELS[b.key][1]}, macs={target:g}\n\n" + model_table(b, target, ep) + "\n\n" + verdict(b, target) + "\n"
            text += "\nHow each student was made:\n\n" + "\n".join(
                f"- {r.method}: {r.detail}" for r in b.rows if r.target == target and r.detail) + "\n"
            if target in b.curves:
                text += f"\nTop-1 against fine-tuning epochs (where a goal is missed: our student vs the best peer):\n\n" + curve_table(b, target)
        for f in b.failures:
            text += f"\n- FAILED (no row): {f}\n"
    if quick:
        text += ("\nQuick mode is a smoke test: ResNet-20 only, 5000 training images, 1 epoch, 8 search episodes, 2000 JPEG "
                 "test images; far below what the agents and the trainer need. The full run is `python -m bench anchors`.\n")
    text += f"\n![top-1 vs measured batch-32 speed-up]({stem}.png)\n\n" + NOTES
    return stem, text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench anchors", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="ResNet-20, macs=0.5, 5000 training images, 1 epoch, 8 episodes, 2000 JPEG images")
    p.add_argument("--models", default=None, help=f"comma-separated: {', '.join(MODELS)} (default both)")
    p.add_argument("--targets", default=None, help="comma-separated MACs fractions (default 0.5,0.33)")
    p.add_argument("--train-images", type=int, default=None, help="use the first N training images (default all 50,000)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tune epochs for every row, passed to compress (default: compress's own)")
    p.add_argument("--episodes", type=int, default=None, help="search episodes per agent and target (default: compress's own)")
    p.add_argument("--epochs-curve", default=None, help="e.g. 1,2,4: re-fine-tune our default student and the best peer for each")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    stem, text = run(args)
    path = write_result(stem, text)
    print(path.read_text())


if __name__ == "__main__":
    main()
