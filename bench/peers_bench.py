"""onnxcompress side by side with the tools users would pick instead (issue 8).

    python -m bench peers [--quick] [--models resnet8,resnet20] [--epochs E] [--seed S]

One run, one teacher, the same data, seed and fine-tune budget for every row, at equal MACs
(50 % and 25 % of the teacher; quick mode: 50 % only):

- **Torch-Pruning** (benchmark-only dependency, `pip install torch-pruning`; the product never
  imports it): global group-magnitude pruning (`MetaPruner` + `GroupMagnitudeImportance(p=2)`,
  `global_pruning=True`, many small iterative steps; full mode also Torch-Pruning's default
  per-layer ratio, `global_pruning=False`) of the PyTorch definition of the same teacher
  carrying the teacher's weights, stopped at the first step whose MACs reach the target, exported to
  ONNX with the teacher's input (NHWC raw pixels for the MLPerf ResNet-8: the transpose is in the
  exported wrapper), then fine-tuned by onnxcompress's trainer, so only the pruning decision differs.
- **uniform L1**: our `prune_channels` with one ratio for every group, bisected on the exact cost
  model (`SearchCost`) to the MACs target, `criterion l1`, least-squares refit (the pass's default
  with calibration data, as in the search's candidates), no search.
- **onnxcompress**: `compress(...)` with the agents `ddpg` and `reinforce` (default episodes in full
  mode), the same fine-tuning inside it; these keep channel counts on onnxruntime's block grid
  (compress's default, for real speed). A third row runs ddpg with `--channel-multiple 1` (any
  width, like every other row here): the accuracy the grid costs.
- **teacher, fine-tuned**: the unpruned teacher through the same fine-tuning. CIFAR-10 here is
  JPEG-decoded, so fine-tuning alone adapts the teacher to JPEG; this row separates that gain from
  what compression costs.

Fine-tuning: `compiler.trainer.finetune` with the recipe `compress` uses (pipeline.finetune_config:
AdamW, KD hinton+attention), E epochs (5 full, 1 quick), early stopping on 1000 images held out of
cifar10_train10k_jpeg.npz (9000 train). The test set (all 10,000 CIFAR-10 JPEG test images; 2000 in
quick mode) is only ever measured, never used to choose anything: the "best agent" is the one with
the better held-out validation top-1. Latency: onnxruntime CPU, 1 thread, every model measured side
by side with the teacher in one `compare_latency` call; ratios only.

Writes bench/results/peers.md and peers.png for the default ResNet-8 run; a run of other teachers
writes peers_<models>.md / .png beside it (e.g. `--models resnet20` -> peers_resnet20.md), so the
ResNet-8 result stays and `python -m bench` assembles both into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from bench.common import CIFAR_TEST, CIFAR_TRAIN, REALDATA, RESNET8, RESULTS, ROOT, header, require_realdata, table, write_result

FASHION_TRAIN = REALDATA / "data" / "fashion_mnist_train.npz"
FASHION_TEST = REALDATA / "data" / "fashion_mnist_test.npz"

TARGETS_FULL = (0.5, 0.25)
TARGETS_QUICK = (0.5,)
AGENTS = ("ddpg", "reinforce")
# compress keeps channel counts on onnxruntime's block grid by default (real speed-up); this row runs
# the default agent with --channel-multiple 1, the free widths every other pruning row has
WIDTH_FREE = "any width"
QUICK_EPISODES = 8  # per agent and target; full mode uses compress's defaults
VAL_IMAGES = 1000  # held out of the 10k training images for early stopping / choosing
QUICK_TEST_IMAGES = 2000
SEARCH_WORKERS = 2  # the search's evaluations in a process pool: same results as in-process (bench/results/search.md), ~1.8x faster
TP_STEPS = 1000  # Torch-Pruning iterative steps towards a 95 % channel ratio: ~0.1 % of channels each

# teachers from models/ (bench/teachers names them): peers key -> (bench.teachers key, label)
ZOO_TEACHERS = {
    "resnet20": ("resnet20_cifar10", "reference ResNet-20 (models/, CIFAR-10 10k)"),
    "demo_cnn": ("demo_cnn_fashion", "VGG-style demo CNN (models/, the bundled demo teacher, Fashion-MNIST 60k)"),
    "mobilenetv2": ("mobilenetv2_cifar10", "reference MobileNetV2 (models/, CIFAR-10 10k)"),
}
TP = "Torch-Pruning (global group L2)"
TP_LOCAL = "Torch-Pruning (per-layer group L2)"
L1 = "uniform L1 + refit"
TEACHER_FT = "teacher, fine-tuned"
TEACHER = "teacher (as delivered)"


@dataclass
class Row:
    method: str
    target: float | None
    model: onnx.ModelProto
    search_s: float = 0.0
    finetune_s: float = 0.0
    val_top1: float | None = None
    detail: str = ""
    # filled in by measure()
    test_top1: float = 0.0
    correct: np.ndarray | None = field(default=None, repr=False)
    macs: int = 0
    params: int = 0
    file_bytes: int = 0
    b1: float = 1.0
    b32: float = 1.0
    b32_cpu: float = 1.0


@dataclass
class Task:
    name: str  # short key
    label: str
    teacher_path: Path
    teacher: onnx.ModelProto  # canonical
    preprocess: object
    train_path: Path  # 9000 images
    val_path: Path  # 1000 held-out images
    job: object  # pipeline.JobData: train / val / calibration, exactly as compress prepares them
    test: object  # Dataset
    test_name: str = "cifar10_test_jpeg.npz"


# ---------------------------------------------------------------------------------------------
# data and teachers
# ---------------------------------------------------------------------------------------------


TRAIN_IMAGES = 10_000  # per task: the size of the CIFAR-10 subset in ../shared (Fashion-MNIST: its first 10k)


def _split_train(workdir: Path, seed: int, source: Path = CIFAR_TRAIN) -> tuple[Path, Path]:
    """The first 10k images of `source` (all of cifar10_train10k_jpeg.npz) split (seeded) into 9000
    training and 1000 held-out images, written as npz files so that compress() and the other rows
    read the very same data."""
    with np.load(source) as d:
        x, y = d["x"][:TRAIN_IMAGES], d["y"][:TRAIN_IMAGES]
    perm = np.random.default_rng(seed).permutation(len(x))
    val, train = np.sort(perm[:VAL_IMAGES]), np.sort(perm[VAL_IMAGES:])
    train_path, val_path = workdir / "train.npz", workdir / "val.npz"
    np.savez(train_path, x=x[train], y=y[train])
    np.savez(val_path, x=x[val], y=y[val])
    return train_path, val_path


def _task(name: str, workdir: Path, seed: int, test_limit: int | None) -> Task:
    from onnxcompress.config import CompressConfig
    from onnxcompress.compiler.data import InputSpec, Preprocess, load_data
    from onnxcompress.compiler.onnx_io import canonicalize, load_model
    from onnxcompress.pipeline import prepare_data

    train_source, test_source = CIFAR_TRAIN, CIFAR_TEST
    if name == "resnet8":
        path, label = RESNET8, "MLPerf Tiny ResNet-8 (real release, NHWC raw 0..255 pixels)"
        preprocess = Preprocess(scale=1.0)  # the model's own: raw pixels
    elif name in ZOO_TEACHERS:
        from bench.teachers import TRAINED, teacher_path

        key, what = ZOO_TEACHERS[name]
        path = teacher_path(key)  # trains it on first use (bench/teachers: measured costs)
        label = what + (f", trained {TRAINED[key].epochs} epochs" if key in TRAINED else "")
        preprocess = Preprocess.from_model(load_model(path))  # its metadata: /255, the dataset's mean/std
        dataset = TRAINED[key].dataset if key in TRAINED else "fashion_mnist"  # the demo teacher's
        if dataset == "fashion_mnist":
            train_source, test_source = FASHION_TRAIN, FASHION_TEST
    else:
        raise SystemExit(f"unknown model '{name}'; choose one of resnet8, {', '.join(ZOO_TEACHERS)}")
    teacher = canonicalize(load_model(path))
    train_path, val_path = _split_train(workdir, seed, train_source)
    val_size = CompressConfig.__dataclass_fields__["val_size"].default
    calib_size = CompressConfig.__dataclass_fields__["calib_size"].default
    job = prepare_data(teacher, train_path, val_path, preprocess, None, val_size, calib_size, seed)
    test = load_data(test_source, InputSpec.from_model(teacher), preprocess, limit=test_limit)
    return Task(name, label, Path(path), teacher, preprocess, train_path, val_path, job, test, test_source.name)


def _torch_teacher(task: Task):
    """(NCHW PyTorch module with the teacher's weights, whether the ONNX teacher takes NHWC)."""
    import torch

    if task.name == "resnet8":
        from onnxcompress.models.zoo import load_resnet8_from_onnx

        module, nhwc = load_resnet8_from_onnx(str(task.teacher_path), softmax=True), True
    else:
        module, nhwc = _zoo_from_onnx(task.name, task.teacher_path), False
    # the PyTorch definition must be the teacher: compare with onnxruntime on real test images
    from onnxcompress.compiler.runtime import make_session, run_batched

    x = np.asarray(task.test.x[:16])
    expected = run_batched(make_session(task.teacher), x)
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2) if nhwc else x))
        got = module(xt).numpy()
    err = float(np.abs(got - expected).max() / max(1e-12, np.abs(expected).max()))
    if err > 1e-3:
        raise RuntimeError(f"the PyTorch {task.name} does not reproduce the ONNX teacher (relative error {err:.1e})")
    return module.eval(), nhwc


def copy_onnx_weights(module, model: onnx.ModelProto, input_shape: tuple[int, ...], what: str) -> None:
    """Copies the Conv/Gemm weights and biases of `model` into `module`'s Conv2d/Linear layers in
    execution order (a forward pass on zeros records it), checking every shape; a layer without a
    bias gets one. Used for the PyTorch twins of ONNX teachers that Torch-Pruning needs."""
    import torch
    from onnx import numpy_helper
    from torch import nn

    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module(torch.zeros(*input_shape))
    for h in hooks:
        h.remove()
    if len(order) != len(nodes):
        raise ValueError(f"{what}: {len(nodes)} Conv/Gemm nodes but the PyTorch module has {len(order)} layers")
    with torch.no_grad():
        for node, layer in zip(nodes, order):
            w, b = weights[node.input[1]], weights[node.input[2]]
            if node.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1 for a in node.attribute):
                w = w.T
            if tuple(w.shape) != tuple(layer.weight.shape):
                raise ValueError(f"{what}: {node.name} weight {w.shape} vs {tuple(layer.weight.shape)}")
            layer.weight.copy_(torch.tensor(w))
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]))
            layer.bias.copy_(torch.tensor(b))


def _zoo_from_onnx(arch: str, path: Path):
    """models/'s `arch` with BN folded (convs with bias), weights copied from the ONNX teacher (an
    export of the same architecture by models/export.py) in execution order (each copy checks
    the shape)."""
    from onnxcompress.models.export import fold_batchnorm
    from onnxcompress.models.zoo import build

    model = onnx.load(str(path))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    classes = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim][-1]
    module = fold_batchnorm(build(arch, classes, dims[1], dims[2]))
    copy_onnx_weights(module, model, (1, dims[1], dims[2], dims[3]), str(path))
    return module.eval()


# ---------------------------------------------------------------------------------------------
# the rows
# ---------------------------------------------------------------------------------------------


def _finetune_config(epochs: int, seed: int, samples: int):
    # exactly the recipe compress() fine-tunes with on these many training images (batch and
    # threads depend on it), so that only the pruning decision differs
    from onnxcompress.pipeline import finetune_config

    return finetune_config(epochs, seed, None, samples=samples)


def _finetune(task: Task, student: onnx.ModelProto, epochs: int, seed: int) -> tuple[onnx.ModelProto, float, float | None]:
    from onnxcompress.compiler.trainer import finetune

    tuned, result = finetune(student, task.teacher, task.job.train, task.job.val, _finetune_config(epochs, seed, len(task.job.train)), progress=False)
    return tuned, result.wall_s, result.best_val_accuracy


def _torch_macs(module, example) -> int:
    """MACs as the cost model counts them (Conv: Cout*Cin/g*kh*kw*Hout*Wout; Linear: in*out)."""
    import torch
    from torch import nn

    total = [0]

    def hook(m, inputs, out):
        total[0] += m.weight.numel() * (out.shape[2] * out.shape[3] if isinstance(m, nn.Conv2d) else 1)

    hooks = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module(example)
    for h in hooks:
        h.remove()
    return total[0]


class _NHWC:
    """Wraps an NCHW module so that the export takes NHWC input like the teacher (a Transpose
    first, as in the tf2onnx release)."""

    @staticmethod
    def wrap(module):
        from torch import nn

        class Wrapper(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner(x.permute(0, 3, 1, 2))

        return Wrapper(module)


def torch_pruning_row(task: Task, target: float, epochs: int, seed: int, global_pruning: bool = True) -> Row:
    import copy

    import torch
    import torch_pruning as tp

    from onnxcompress.compiler.cost import model_cost
    from onnxcompress.models.export import to_onnx

    base, nhwc = _torch_teacher(task)
    module = copy.deepcopy(base)
    dims = tuple(d.dim_value for d in task.teacher.graph.input[0].type.tensor_type.shape.dim[1:])  # as the ONNX teacher takes it
    nchw = (dims[2], dims[0], dims[1]) if nhwc else dims
    example = torch.zeros(1, *nchw)
    head = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    teacher_macs = _torch_macs(module, example)
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        module,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=global_pruning,
        pruning_ratio=0.95,
        iterative_steps=TP_STEPS,
        ignored_layers=head,  # the classifier's outputs are the classes
    )
    steps = 0
    macs = teacher_macs
    while macs > target * teacher_macs and steps < TP_STEPS:
        pruner.step()
        steps += 1
        macs = _torch_macs(module, example)
    prune_s = time.perf_counter() - t0
    module.eval()
    export = _NHWC.wrap(module) if nhwc else module
    shape = (1, *dims)
    student = to_onnx(export, shape, fold_bn=True, metadata={p.key: p.value for p in task.teacher.metadata_props})
    onnx_macs = model_cost(onnx.shape_inference.infer_shapes(student)).macs
    if onnx_macs != macs:
        raise RuntimeError(f"Torch-Pruning student: {macs} MACs in PyTorch but {onnx_macs} in the exported ONNX")
    widths = [m.out_channels for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    tuned, ft_s, val = _finetune(task, student, epochs, seed)
    before = _top1(student, task.job.val)
    return Row(TP if global_pruning else TP_LOCAL, target, tuned, prune_s, ft_s, val,
               f"{steps} steps; conv widths {widths}; val top-1 before fine-tuning {100 * before:.1f} %")


def uniform_l1_row(task: Task, target: float, epochs: int, seed: int) -> Row:
    from onnxcompress.compiler.cost import model_cost
    from onnxcompress.compiler.ir import analyze
    from onnxcompress.compiler.onnx_io import import_graph
    from onnxcompress.passes import Plan, apply_plan
    from onnxcompress.passes.prune_channels import uniform_ratio

    t0 = time.perf_counter()
    # the smallest ratio whose predicted MACs meet the target (bisection on the exact cost model)
    ratio = uniform_ratio(analyze(import_graph(task.teacher)), macs=target, iterations=40, decimals=6)
    plan = Plan.from_json({"passes": [{"pass": "prune_channels", "ratio": ratio, "criterion": "l1", "reconstruct": True}]})
    student = apply_plan(task.teacher, plan, calibration=task.job.calibration, seed=seed)
    if model_cost(student).macs > target * model_cost(task.teacher).macs:
        raise RuntimeError(f"uniform ratio {ratio}: {model_cost(student).macs} MACs miss the target {target}")
    rewrite_s = time.perf_counter() - t0
    before = _top1(student, task.job.val)
    tuned, ft_s, val = _finetune(task, student, epochs, seed)
    return Row(L1, target, tuned, rewrite_s, ft_s, val, f"ratio {ratio:.6g}; val top-1 before fine-tuning {100 * before:.1f} %")


def onnxcompress_row(task: Task, agent: str, target: float, epochs: int, seed: int, episodes: int | None,
                     channel_multiple: int | None = None) -> Row:
    """`compress` with `agent`; `channel_multiple` None is compress's default (onnxruntime's
    channel block, for real speed), 1 lets it keep any width like the other rows do."""
    from onnxcompress.config import CompressConfig
    from onnxcompress.pipeline import compress

    config = CompressConfig.from_options(f"macs={target}", agent=agent, episodes=episodes, finetune_epochs=epochs, seed=seed,
                                         progress=False, workers=SEARCH_WORKERS, channel_multiple=channel_multiple)
    result = compress(task.teacher_path, task.train_path, config, val_data=task.val_path, preprocess=task.preprocess)
    s = result.students[0]
    r = result.report
    detail = f"{r.episodes} episodes, {r.evaluations} evaluations; plan {_short_plan(s.plan.to_json())}"
    if s.search_accuracy is not None:
        detail += f"; val top-1 before fine-tuning {100 * s.search_accuracy:.1f} %"
    if not s.feasible:
        detail += f"; compress: {s.note}"
    method = f"onnxcompress {agent}" + (f" ({WIDTH_FREE})" if channel_multiple == 1 else "")
    return Row(method, target, s.model, r.search_wall_s, r.finetune_wall_s, s.metrics.accuracy, detail)


def int8_row(task: Task, agent_rows: list[Row], seed: int) -> Row:
    """Pruning + int8: the best agent's fine-tuned student (by validation top-1) through our
    quantize pass, calibrated on compress's calibration images: what `--target macs=M,size=S`
    does after fine-tuning when int8 meets the size."""
    from onnxcompress.passes import Plan, apply_plan

    best = max(agent_rows, key=lambda r: r.val_top1 or 0.0)
    t0 = time.perf_counter()
    q = apply_plan(best.model, Plan.from_json({"passes": [{"pass": "quantize", "bits": 8}]}), calibration=task.job.calibration, seed=seed)
    quant_s = time.perf_counter() - t0
    return Row(f"{best.method} + int8", best.target, q, best.search_s + quant_s, best.finetune_s, _top1(q, task.job.val),
               f"the {best.method} student above, quantized (int8 QDQ, {len(task.job.calibration)} calibration images, {quant_s:.1f} s)")


def _top1(model: onnx.ModelProto, data) -> float:
    from onnxcompress.compiler.metrics import top1
    from onnxcompress.compiler.runtime import make_session, run_batched

    return top1(run_batched(make_session(model), data.x), data.y)


def _short_plan(plan: dict) -> str:
    parts = []
    for p in plan.get("passes", []):
        if p.get("pass") == "prune_channels" and "groups" in p:
            parts.append("keep " + ",".join(f"{k}:{v}" for k, v in sorted(p["groups"].items(), key=lambda kv: int(kv[0][1:]) if kv[0][1:].isdigit() else 0)))
        elif p.get("pass") == "remove":
            parts.append(f"remove {p.get('block')}")
        else:
            parts.append(str({k: v for k, v in p.items()}))
    return "; ".join(parts) or "(empty)"


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------


def measure(task: Task, rows: list[Row], rounds: int) -> None:
    from onnxcompress.compiler.cost import model_cost
    from onnxcompress.compiler.metrics import predicted_classes
    from onnxcompress.compiler.runtime import compare_latency, make_session, run_batched

    for row in rows:
        pred = predicted_classes(run_batched(make_session(row.model), task.test.x))
        row.correct = pred == task.test.y
        row.test_top1 = float(row.correct.mean())
        cost = model_cost(onnx.shape_inference.infer_shapes(row.model))  # the cost model reads inferred shapes
        row.macs, row.params, row.file_bytes = cost.macs, cost.params, len(row.model.SerializeToString())
    sample = np.asarray(task.test.x[:32])
    lat = compare_latency([task.teacher, *[r.model for r in rows]], sample, rounds=rounds)
    for row, l in zip(rows, lat[1:]):
        row.b1, row.b32 = l.batch1 / lat[0].batch1, l.batch32 / lat[0].batch32
    # the same in CPU time, each model timed in pairs with the teacher (compiler.runtime): other
    # jobs on the machine slow wall time down, much less the CPU time of our own thread
    from onnxcompress.compiler.runtime import paired_latency

    base, variants = paired_latency(task.teacher, [r.model for r in rows], sample, rounds=rounds + 2, cpu=True)
    for row, l in zip(rows, variants):
        row.b32_cpu = l.batch32 / base.batch32


def mcnemar(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """(a right & b wrong, a wrong & b right, two-sided p) on paired predictions; normal
    approximation with continuity correction."""
    n01, n10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if n01 + n10 == 0:
        return n01, n10, 1.0
    z = (abs(n01 - n10) - 1) / math.sqrt(n01 + n10)
    return n01, n10, float(math.erfc(max(z, 0.0) / math.sqrt(2)))


def _fmt_s(s: float) -> str:
    return f"{s:.0f}" if s >= 10 else f"{s:.1f}"


def results_table(task: Task, rows: list[Row]) -> str:
    teacher = rows[0]
    out = []
    for r in rows:
        macs = r.macs / teacher.macs
        # from the paired CPU-time ratio: compare_latency's wall-time ratios drift with the load of
        # other jobs (the teacher timed against itself has read 0.77 at batch 32 on a busy machine)
        realised = f"{macs / r.b32_cpu:.2f}" if r.target is not None else "—"
        out.append([
            r.method,
            "—" if r.target is None else f"{r.target:g}",
            f"{100 * r.test_top1:.2f}",
            "—" if r.val_top1 is None else f"{100 * r.val_top1:.1f}",
            f"{macs:.3f} ({r.macs / 1e6:.2f} M)",
            f"{r.params / teacher.params:.3f}",
            f"{r.file_bytes / teacher.file_bytes:.3f} ({r.file_bytes / 1024:.0f} KiB)",
            f"{r.b1:.2f}",
            f"{r.b32:.2f}",
            f"{r.b32_cpu:.2f}",
            realised,
            _fmt_s(r.search_s),
            _fmt_s(r.finetune_s),
        ])
    return table(
        ["method", "MACs target", "test top-1 %", "val top-1 %", "MACs", "params", "file", "latency b1", "latency b32", "b32 CPU time", "realised b32", "search s", "fine-tune s"],
        out,
    )


def verdict(rows: list[Row], target: float = 0.5) -> str:
    at = {r.method: r for r in rows if r.target == target}
    agents = [r for m, r in at.items() if m.startswith("onnxcompress") and not m.endswith("+ int8")]
    if not agents or TP not in at or L1 not in at:
        return f"Goal at macs={target:g}: not evaluated (a row is missing)."
    # the best agent is chosen on the held-out validation images, never on the test set
    best = max(agents, key=lambda r: (r.val_top1 or 0.0))
    tp, l1 = at[TP], at[L1]
    d_tp, d_l1 = 100 * (best.test_top1 - tp.test_top1), 100 * (best.test_top1 - l1.test_top1)
    _, _, p_tp = mcnemar(best.correct, tp.correct)
    _, _, p_l1 = mcnemar(best.correct, l1.correct)
    ok_tp, ok_l1 = d_tp >= 0, d_l1 >= 1.0
    return (
        f"Goal at macs={target:g} (best agent by validation top-1 ≥ Torch-Pruning, and ≥ uniform L1 + 1 point, on the test set): "
        f"**{'met' if ok_tp and ok_l1 else 'NOT met'}**. Best agent: {best.method} ({100 * best.test_top1:.2f} %); "
        f"vs Torch-Pruning {d_tp:+.2f} points (McNemar p={p_tp:.2g}, {'met' if ok_tp else 'missed'}); "
        f"vs uniform L1 {d_l1:+.2f} points (p={p_l1:.2g}, {'met' if ok_l1 else 'missed'})."
    )


def plot(results: list[tuple[Task, list[Row]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.4 * len(results), 4.6), squeeze=False)
    for ax, (task, rows) in zip(axes[0], results):
        teacher = rows[0]
        methods = [m for m in dict.fromkeys(r.method for r in rows if r.target is not None)]
        for m in methods:
            pts = sorted((r.macs / teacher.macs, 100 * r.test_top1) for r in rows if r.method == m)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        for r, style in ((teacher, ":"), (next((r for r in rows if r.method == TEACHER_FT), None), "--")):
            if r is not None:
                ax.axhline(100 * r.test_top1, color="grey", linestyle=style, linewidth=1, label=f"{r.method} {100 * r.test_top1:.1f} %")
        ax.set_xlabel("MACs / teacher")
        ax.set_ylabel(f"top-1 % ({task.test_name}, {len(task.test)} images)")
        ax.set_title(task.label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


def _product_origin() -> str:
    """Where onnxcompress was imported from, and whether its sources differ from HEAD there (other
    engineers edit the same work tree: a result should say which code produced it)."""
    import onnxcompress

    origin = Path(onnxcompress.__file__).resolve().parent
    if origin == ROOT / "onnxcompress":
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "compiler", "passes", "search", "models", "onnxcompress"],
            capture_output=True, text=True, cwd=ROOT,
        ).stdout.split("\n")
        dirty = [line[3:] for line in dirty if line.strip()]
        return "the work tree" + (f" with uncommitted changes in {', '.join(dirty)}" if dirty else " (clean)")
    # an export of a commit (git archive) run with PYTHONPATH, which says its commit in a COMMIT file
    commit = next((p / "COMMIT" for p in (origin, origin.parent) if (p / "COMMIT").exists()), None)
    return f"an export of commit {commit.read_text().strip()}, not the work tree" if commit else str(origin)


def run_task(name: str, quick: bool, epochs: int, seed: int, workdir: Path, log, targets: tuple[float, ...] | None = None) -> tuple[Task, list[Row]]:
    task = _task(name, workdir, seed, QUICK_TEST_IMAGES if quick else None)
    targets = targets or (TARGETS_QUICK if quick else TARGETS_FULL)
    episodes = QUICK_EPISODES if quick else None
    log(f"[{name}] {len(task.job.train)} train / {len(task.job.val)} val / {len(task.test)} test images; targets {targets}")
    rows = [Row(TEACHER, None, task.teacher)]
    t0 = time.perf_counter()
    tuned, ft_s, val = _finetune(task, task.teacher, epochs, seed)
    rows.append(Row(TEACHER_FT, None, tuned, 0.0, ft_s, val))
    log(f"[{name}] {TEACHER_FT}: val {val:.4f}, {ft_s:.0f} s")
    try:
        import torch_pruning  # noqa: F401

        have_tp = True
    except ImportError:
        have_tp = False
        log("torch-pruning is not installed (pip install torch-pruning): its rows are left out")
    for target in targets:
        makers = [("L1", lambda: uniform_l1_row(task, target, epochs, seed))]
        if have_tp:
            makers.insert(0, ("TP", lambda: torch_pruning_row(task, target, epochs, seed)))
            if not quick:  # Torch-Pruning's default, per-layer ratio: a fairer second setting
                makers.insert(1, ("TPL", lambda: torch_pruning_row(task, target, epochs, seed, global_pruning=False)))
        makers += [(a, (lambda a=a: onnxcompress_row(task, a, target, epochs, seed, episodes))) for a in AGENTS]
        makers.append(("ddpg-free", lambda: onnxcompress_row(task, AGENTS[0], target, epochs, seed, episodes, channel_multiple=1)))
        for label, make in makers:
            r0 = time.perf_counter()
            row = make()
            rows.append(row)
            log(f"[{name}] macs={target:g} {row.method}: val {row.val_top1}, search {row.search_s:.0f} s, fine-tune {row.finetune_s:.0f} s ({time.perf_counter() - r0:.0f} s) {row.detail}")
        row = int8_row(task, [r for r in rows if r.target == target and r.method.startswith("onnxcompress")], seed)
        rows.append(row)
        log(f"[{name}] macs={target:g} {row.method}: val {row.val_top1} {row.detail}")
    measure(task, rows, rounds=3 if quick else 7)
    log(f"[{name}] done in {time.perf_counter() - t0:.0f} s")
    return task, rows


NOTES = """### Notes

- Torch-Pruning removes channels and leaves the recovery to retraining (no reconstruction); the DepGraph
  paper retrains for ~100 epochs. Its students start at chance (the "val top-1 before fine-tuning" below),
  so within this budget its rows measure "pruning without a refit + a few epochs" rather than
  Torch-Pruning's choice of channels alone (our own uniform L1 without its least-squares refit starts as
  low: ~13 % top-1 at 50 % MACs on ResNet-8). On the BN-folded ResNet-8 fed raw 0..255 pixels, weight
  magnitudes are not comparable across layers (folding scaled each conv by its BN, the stem sees raw
  pixels): the global ranking prunes the 16-channel early layers hardest.
- Latency: channel counts off onnxruntime's 8/16-channel blocks (11, 23, 45, ...) leave its blocked
  (NCHWc) convolution kernels' fast path, so a network pruned to half the MACs with such widths takes
  *longer* than the teacher (bench/results/structural.md shows the same for uniform pruning). compress
  therefore keeps widths on the block grid (`--channel-multiple`, default the block of this CPU) and
  removes whole residual blocks where a short fine-tune says it pays (its structure families); the
  "any width" row is the same search without the grid.

- Every row is one fine-tuning run with one seed. The standard error of a top-1 on 10,000 test images
  is about ±0.4 points, and different seeds of the same fine-tuning move top-1 by a similar amount:
  differences under ~1 point are not a ranking. The McNemar p-values compare the paired predictions on
  the same test images.
- MACs, params and file size are measured on the exported ONNX by onnxcompress's cost model (Conv and
  Gemm/MatMul multiply-accumulates at batch 1), the same counter for every row. Torch-Pruning's student
  is checked to have the MACs counted in PyTorch. Latency ratios are to the canonical teacher, measured
  side by side (onnxruntime CPU, one thread), on a shared 2-core machine: ±0.05-0.1 run to run.
- The Torch-Pruning student is an ONNX exported from PyTorch (an explicit Pad before each strided conv,
  GlobalAveragePool, Flatten, Gemm), ours are rewrites of the canonicalised teacher (asymmetric pads inside
  the Conv, AveragePool, Reshape, Gemm): file sizes and latencies also carry these exporter differences,
  not only the channel counts. The teacher row's own latency ratio is a noise gauge (the teacher timed
  against itself).
- Attention-transfer KD pairs feature maps by name when the student keeps the teacher's tensor names
  (our rewrites) and by spatial size otherwise (the Torch-Pruning export): the same stage boundaries, the
  same loss.
"""


def run(quick: bool, models: list[str], epochs: int, seed: int, targets: tuple[float, ...] | None = None) -> str:
    require_realdata()
    import torch

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    results = []
    command = "python -m bench peers" + (" --quick" if quick else "") + (f" --targets {','.join(map(str, targets))}" if targets else "")
    if models != ["resnet8"]:
        command += f" --models {','.join(models)}"
    if epochs != (1 if quick else 5):
        command += f" --epochs {epochs}"
    if seed != 0:
        command += f" --seed {seed}"

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        for name in models:
            work = Path(tmp) / name
            work.mkdir()
            results.append(run_task(name, quick, epochs, seed, work, log, targets))
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = result_name(models)
    plot(results, RESULTS / f"{name}.png")

    title = "onnxcompress vs Torch-Pruning vs uniform L1 at equal MACs"
    if name != "peers":
        title += ": " + ", ".join(models)
    text = header(title + " (issue 8)", command)
    text += (
        f"\nonnxcompress code: {_product_origin()}. Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
        f"whole run {(time.perf_counter() - t_start) / 60:.0f} min.\n\n"
        f"Data: cifar10_train10k_jpeg.npz (Fashion-MNIST teachers: the first 10,000 images of fashion_mnist_train.npz) split "
        f"(seed {seed}) into 9000 training and 1000 held-out images "
        "(early stopping, the search's validation subset, choosing the best agent); top-1 on "
        f"{'the first ' + str(QUICK_TEST_IMAGES) + ' images of ' if quick else 'all 10,000 images of '}cifar10_test_jpeg.npz "
        "(fashion_mnist_test.npz). "
        f"Fine-tuning: {epochs} epoch{'s' if epochs != 1 else ''}, seed {seed}, the recipe of `compress` (AdamW, KD hinton+attention from the teacher) "
        f"for every row. Search: {'%d episodes per agent and target (quick)' % QUICK_EPISODES if quick else 'compress defaults (60 episodes per agent and target)'}.\n"
        "Ratios are to the teacher (as delivered, canonicalised); latency b1/b32 = student / teacher latency at batch 1/32, measured "
        "side by side in one run (`compare_latency`, wall time); b32 CPU time = the same ratio in CPU time, each model timed in "
        "pairs with the teacher (`compiler.runtime.paired_latency`), which other jobs on the machine disturb less; "
        "realised = latency speed-up ÷ MACs reduction at batch 32, from the CPU-time ratio (1.0: every saved MAC becomes time). "
        "search s: Torch-Pruning's pruning loop, uniform L1's bisection + rewrite + refit, the RL search of compress.\n"
    )
    for task, rows in results:
        text += f"\n### {task.label}\n\nTest set: {len(task.test)} images of {task.test_name}.\n\n" + results_table(task, rows) + "\n\n"
        text += verdict(rows, 0.5) + "\n"
        if any(r.target == 0.25 for r in rows):
            text += "\n" + verdict(rows, 0.25).replace("Goal at", "Same comparison at") + "\n"
        text += "\nHow each student was made:\n\n" + "\n".join(
            f"- {r.method} @ macs={r.target:g}: {r.detail}" for r in rows if r.target is not None and r.detail
        ) + "\n"
    if quick:
        text += (
            f"\nQuick mode is a smoke test: {QUICK_EPISODES} search episodes and one fine-tuning epoch are far below "
            "what the agents and the trainer need; read the full-mode table for the comparison.\n"
        )
    if "resnet20" not in models and not (RESULTS / "peers_resnet20.md").exists():
        text += (
            "\nThe reference ResNet-20 is not in this run: training it (bench.teachers, 30 epochs) takes ~14 min on an idle "
            "2-core machine (an hour or more when other jobs share it), and its rows take ~1 hour per target; "
            "`--models resnet20` runs it into peers_resnet20.md (after `python -m bench.teachers resnet20_cifar10`).\n"
        )
    text += f"\n![accuracy vs MACs]({name}.png)\n\n" + NOTES
    return text


def result_name(models: list[str]) -> str:
    """bench/results file stem of a run: `peers` for the default ResNet-8 run, else one per set of
    teachers, so that running the slow reference teachers separately keeps the ResNet-8 result."""
    return "peers" if models == ["resnet8"] else "peers_" + "_".join(models)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench peers", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="macs=0.5 only, 1 epoch, 8 episodes, 2000 test images, ResNet-8 only")
    p.add_argument("--models", default=None, help=f"comma-separated: resnet8, {', '.join(ZOO_TEACHERS)} (default resnet8; the trained teachers of bench.teachers take ~3x the time)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tune epochs for every row (default 5, quick 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--targets", default=None, help="comma-separated MACs fractions (default 0.5,0.25; quick 0.5)")
    args = p.parse_args(argv)
    models = args.models.split(",") if args.models else ["resnet8"]
    epochs = args.epochs or (1 if args.quick else 5)
    targets = tuple(float(t) for t in args.targets.split(",")) if args.targets else None
    path = write_result(result_name(models), run(args.quick, models, epochs, args.seed, targets))
    print(path.read_text())


if __name__ == "__main__":
    main()
