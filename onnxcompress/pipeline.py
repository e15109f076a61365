"""The end-to-end pipeline: teacher -> search -> plan replay -> KD fine-tuning -> (quantization)
-> export + report. `compress()` is the Python API behind `onnxcompress compress` (the command
itself, which reads the files and writes the outputs, is in onnxcompress/commands.py).

Data flow (DESIGN.md): the teacher is canonicalised once; with --classes its head is cut first
(subset_classes), so the whole search optimises the specialised task; the search evaluates plans
without training; only the chosen students are fine-tuned, with KD from the full teacher (its
logits at the kept classes).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx

from onnxcompress.compiler import binary_head
from onnxcompress.config import CompressConfig, Target
from onnxcompress.compiler.cost import model_cost
from onnxcompress.compiler.data import Dataset, InputSpec, Preprocess, as_classifier, load_data
from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.kd import KDConfig
from onnxcompress.compiler.metrics import top1
from onnxcompress.compiler.onnx_io import canonicalize, import_graph, is_quantized, load_model, num_classes, save_model_atomic
from onnxcompress.budget import PROBE_SHARE, SEARCH_SHARE, TimeBudget, epochs_within
from onnxcompress.budget import episodes_within as budget_episodes
from onnxcompress.report import Measure, ModelMetrics, RunReport, StudentReport
from onnxcompress.compiler.runtime import Latency, compare_latency, make_session, measure_latency, run_batched
from onnxcompress.compiler.teacher_fit import teacher_fit
from onnxcompress.compiler.trainer import FinetuneConfig, finetune
from onnxcompress.compiler.errors import DataError, ModelError, UsageError
from onnxcompress.passes import Plan, apply_plan, get_pass


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobData:
    train: Dataset
    val: Dataset
    calibration: np.ndarray
    val_images: str = "the validation images"  # which images `val` is, for the user


def prepare_data(
    teacher: onnx.ModelProto,
    data: str | Path,
    val_data: str | Path | None,
    preprocess: Preprocess,
    classes: Sequence[int] | None,
    val_size: int,
    calib_size: int,
    seed: int,
) -> JobData:
    """Training data, a fixed validation subset (from --val-data, else held out of --data) and
    calibration inputs (from the training data), all filtered to `classes` when given."""
    spec = InputSpec.from_model(teacher)
    n_classes = num_classes(teacher)
    train = load_data(data, spec, preprocess, classes=classes, num_classes=n_classes)
    if len(train) < 2:
        raise DataError(f"the training data has {len(train)} usable samples; need at least 2")
    rng = np.random.default_rng(seed)
    if val_data is not None:
        val = load_data(val_data, spec, preprocess, classes=classes, num_classes=n_classes)
        described = f"{len(val):,} images of --val-data {Path(val_data).name}"
        if len(val) > val_size:
            val = val.take(np.sort(rng.permutation(len(val))[:val_size]))
            described = f"{len(val):,} random images of the {described}"
    else:
        n_val = min(val_size, max(1, len(train) // 5))
        perm = rng.permutation(len(train))
        val, train = train.take(np.sort(perm[:n_val])), train.take(np.sort(perm[n_val:]))
        described = f"{n_val:,} validation images held out of --data {Path(data).name}"
    calib = train.x[np.sort(rng.permutation(len(train))[: min(calib_size, len(train))])]
    return JobData(train, val, calib, described)


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------


def model_top1(model: onnx.ModelProto, data: Dataset, reference: np.ndarray | None = None) -> float | None:
    """Top-1 against labels, or agreement with `reference` predictions when there are none."""
    target = data.y if data.y is not None else reference
    return None if target is None else top1(run_batched(make_session(model), data.x), target)


def measure(model: onnx.ModelProto, data: Dataset, reference: np.ndarray | None = None, latency: bool = True) -> ModelMetrics:
    """Cost, top-1 and (unless `latency=False`: the caller times models side by side) latency."""
    cost = model_cost(model)
    return ModelMetrics(cost.macs, cost.params, model.ByteSize(), model_top1(model, data, reference),
                        measure_latency(model, data.x[:32]) if latency else None)


def _layer_channels(teacher: onnx.ModelProto, student: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    t = {l.name: l.out_channels for l in analyze(import_graph(teacher)).layers}
    s = {l.name: l.out_channels for l in analyze(import_graph(student)).layers} if not is_quantized(student) else {}
    if not s:
        return {}
    return {name: (c, s.get(name, 0)) for name, c in t.items()}


# ----------------------------------------------------------------------------------------------
# interruption: SIGTERM behaves like Ctrl-C so that no partial output is ever written
# ----------------------------------------------------------------------------------------------


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C while the body runs (for API callers; the CLI
    installs the same handler for the whole process)."""
    from onnxcompress.interrupts import raise_interrupt

    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, raise_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------------------------
# the job
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Student:
    target: Target
    plan: Plan
    model: onnx.ModelProto
    metrics: ModelMetrics
    search_accuracy: float | None
    feasible: bool
    note: str


@dataclass(frozen=True)
class CompressResult:
    teacher: ModelMetrics
    students: tuple[Student, ...]
    report: RunReport

    @property
    def model(self) -> onnx.ModelProto:
        return self.students[0].model

    def save(self, path: str | Path) -> Path:
        return save_model_atomic(self.model, path)


def _default_agent(target: Target) -> str:
    structural = any(v is not None for v in (target.macs, target.params, target.latency))
    # ddpg reaches reinforce's held-out accuracy on ResNet-8 without spending episodes on removals (bench/results/search.md)
    return "ddpg" if structural else "haq"


# training sets from this size on are fine-tuned in batches of LARGE_DATA_BATCH on every core
LARGE_DATA = 20_000
LARGE_DATA_BATCH = 64


def finetune_config(epochs: int, seed: int, classes: tuple[int, ...] | None, device: str = "cpu", samples: int = 0,
                    precision: str = "auto") -> FinetuneConfig:
    """The fine-tuning recipe of compress. The trainer's defaults (AdamW, small lr) are
    deliberate: SGD at 0.01 wrecks models fed raw 0..255 pixels (MLPerf ResNet-8: 77 % -> 28 % in
    one epoch), AdamW is scale-invariant. With `samples` >= LARGE_DATA training images the batch
    is 64 and torch uses every core: steps are plentiful there (49,000 images are 765 steps an
    epoch), and the large batch is what lets a second thread pay. Measured on the CIFAR ResNet-56
    with 13 blocks removed (AMD EPYC, 2 cores, another job running): 1 epoch over 10,000 images,
    batch 16 -> 86.5 % and batch 64 -> 85.7 % test top-1 in the same time (397 vs 381 s: a tie
    on 1,000 test images); per 1,000 images batch 64 takes 9.9 s on 1 thread and 6.0 s on 2,
    while batch 16 on 2 threads took 97 s (OpenMP threads spinning on small batches).
    `precision` (--train-precision): "auto" trains in bf16 where the device has native bf16
    arithmetic (compiler/device.py resolve_precision), float32 elsewhere."""
    from onnxcompress.compiler.device import resolve_precision

    large = samples >= LARGE_DATA
    return FinetuneConfig(epochs=epochs, seed=seed, kd=KDConfig(kinds=("hinton", "attention")), teacher_classes=classes, device=device,
                          batch_size=LARGE_DATA_BATCH if large else 16, threads=(os.cpu_count() or 1) if large else 1,
                          precision=resolve_precision(precision, device))


def compress(
    model: str | Path | onnx.ModelProto,
    data: str | Path,
    config: CompressConfig,
    *,
    val_data: str | Path | None = None,
    preprocess: Preprocess | None = None,
    save_policy: str | Path | None = None,
    load_policy: str | Path | None = None,
    name: str | None = None,
    input_size: tuple[int, int] | None = None,
) -> CompressResult:
    """Searches, rewrites and fine-tunes a student per target of `config`. See the module
    docstring. The keywords are what is not the job's configuration: the validation data, the
    preprocessing (default: the model's metadata), the RL policy files, the name in the report,
    and `input_size`, the height and width for a model exported with dynamic ones (default: the
    size of the `.npz` images). onnxcompress.compress is the same with options by name."""
    from onnxcompress.compiler.device import resolve_device

    hardware = resolve_device(config.device)
    budget = TimeBudget(config.time_budget_s) if config.time_budget_s is not None else None
    original = model if isinstance(model, onnx.ModelProto) else load_model(model)
    model_name = name or (Path(model).name if not isinstance(model, onnx.ModelProto) else "model.onnx")
    # a dynamic input size pinned, a sigmoid head searched and trained as two classes
    original, note = as_classifier(original, data, input_size, model_name, config.classes, needs_scores="compress")
    if note:
        _say(config.progress, note)
    if is_quantized(original):
        raise ModelError(f"{model_name} is already quantized (QuantizeLinear/DequantizeLinear): compress needs the float "
                         "teacher (quantization is one of its own passes)")
    teacher = canonicalize(original)
    preprocess = preprocess or Preprocess.from_model(original)
    n_classes = num_classes(teacher)
    if config.classes is not None and n_classes is not None and max(config.classes) >= n_classes:
        raise UsageError(f"--classes {max(config.classes)} is out of range: the model has {n_classes} classes (0..{n_classes - 1})")
    job = prepare_data(teacher, data, val_data, preprocess, config.classes, config.val_size, config.calib_size, config.seed)
    _say(config.progress, f"teacher: {model_name}; data: {len(job.train)} train / {len(job.val)} validation samples")
    if job.val.y is None:
        _say(config.progress, "note: the data has no labels: top-1 below is agreement with the teacher's predictions "
                       "(the teacher's own is 100 % by definition)")
    note = small_validation_note(len(job.val), config.max_drop)
    if note:
        _say(config.progress, note)

    # the search base: the teacher, specialised to the classes when asked
    prefix = Plan()
    base = teacher
    if config.classes is not None:
        prefix = Plan.from_json({"passes": [{"pass": "subset_classes", "classes": list(config.classes)}]})
        base = apply_plan(teacher, prefix)
    teacher_scores = run_batched(make_session(base), job.val.x)
    teacher_pred = teacher_scores.reshape(len(teacher_scores), -1).argmax(1)
    job, val_measure = _choose_measure(job, teacher_scores, teacher_pred, val_data is not None, config.progress)
    teacher_metrics = measure(base, job.val, teacher_pred, latency=False)
    if teacher_metrics.accuracy is None:
        teacher_metrics = replace(teacher_metrics, accuracy=1.0)  # agreement with itself
    if val_measure.kind == "top1":  # (agreement: the warning or the no-labels note above said what it is)
        _say(config.progress, f"teacher: top-1 {100 * teacher_metrics.accuracy:.2f}% on {val_measure.images}")

    if budget is not None:
        budget.record("prepare", budget.elapsed())
        _say(config.progress, f"time budget {budget.total_s / 60:.0f} min: {budget.elapsed():.0f} s spent reading the data and the teacher")
    outcome = _search(base, teacher, job, config, save_policy, load_policy, hardware, budget)

    built: list[tuple[Target, Plan, onnx.ModelProto, float | None]] = []
    ft_wall = 0.0
    ft_epochs: int | None = None  # the epochs a time budget let the first target's fine-tune run
    ft_precision = "fp32"
    for tgt, plan, search_acc in outcome.choices:
        ckpt = config.checkpoint_dir / f"finetune-{tgt.label().replace(',', '_').replace('=', '')}" if config.checkpoint_dir else None
        if ckpt is not None:
            ckpt.mkdir(parents=True, exist_ok=True)
        # quantize steps come last and are applied after fine-tuning: the trainer works on the
        # float student (the bridge has no QDQ ops) and quantization is calibrated on its weights
        plan, quantization = split_terminal(plan)
        student = apply_plan(base, plan, calibration=job.calibration, seed=config.seed)
        if config.finetune_epochs > 0 and not plan_is_empty(plan):
            ft_config = finetune_config(config.finetune_epochs, config.seed, config.classes, hardware.torch, len(job.train),
                                        config.train_precision)
            train = job.train
            if budget is not None:  # this target's share of what is left
                ft_config, train = _fit_finetune(student, teacher, job, ft_config, budget, len(outcome.choices) - len(built), config)
            _say(config.progress, f"fine-tuning the student for {tgt.label()} ({ft_config.epochs} epoch{'s' if ft_config.epochs != 1 else ''} over "
                                  f"{len(train):,} images, batch {ft_config.batch_size}, KD from the teacher)")
            student, ft = finetune(student, teacher, train, job.val, ft_config, checkpoint_dir=ckpt, progress=config.progress)
            ft_wall += ft.wall_s
            ft_precision = ft.precision
            if budget is not None:
                budget.record("finetune", ft.wall_s)
                ft_epochs = ft_epochs if ft_epochs is not None else ft.epochs_run
                if ft.epochs_run != ft_config.epochs:
                    budget.note(f"fine-tuning: ran {ft.epochs_run} epochs ({ft_config.epochs} planned; the trainer "
                                "re-plans from each measured epoch to fill its time limit)")
        final_plan = prefix.then(plan)
        if not plan_is_empty(quantization):
            student = apply_plan(student, quantization, calibration=job.calibration, seed=config.seed)
            final_plan = final_plan.then(quantization)
        student = preprocess.stamp(student)  # the student remembers the inputs it was built for
        if tgt.size is not None and student.ByteSize() > tgt.size * teacher_metrics.size_bytes:
            student, quant_plan = _quantize_for_size(student, tgt, teacher_metrics, job, config)
            final_plan = final_plan.then(quant_plan)
        built.append((tgt, final_plan, student, search_acc))

    # latency of the teacher and every student timed side by side, in pairs (one run, CPU time)
    latencies = compare_latency([base, *[b[2] for b in built]], job.val.x[:32], rounds=5)
    teacher_metrics = replace(teacher_metrics, latency_ms=latencies[0])
    students: list[Student] = []
    for (tgt, final_plan, student, search_acc), latency in zip(built, latencies[1:]):
        metrics = replace(measure(student, job.val, teacher_pred, latency=False), latency_ms=latency)
        drop = accuracy_drop(teacher_metrics.accuracy, metrics.accuracy)
        met = _meets(metrics, teacher_metrics, tgt)
        feasible = drop <= config.max_drop and met
        note = _accuracy_note(metrics.accuracy, teacher_metrics.accuracy, drop, val_measure) + f", MACs {metrics.macs / teacher_metrics.macs:.3f}x"
        if not met:
            note += "; the target was NOT met (this is the closest plan the search found)"
        if drop > config.max_drop:
            note += _budget_note(drop, config.max_drop, val_measure)
        note += _slower_note(latency, teacher_metrics.latency_ms, outcome.channel_multiple)
        students.append(Student(tgt, final_plan, student, metrics, search_acc, feasible, note))

    report = RunReport(
        model=model_name,
        teacher=teacher_metrics,
        students=tuple(
            StudentReport(
                target=s.target.to_json(),
                plan=s.plan.to_json(),
                metrics=s.metrics,
                search_accuracy=s.search_accuracy,
                feasible=s.feasible,
                note=s.note,
                output=None,
                channels=_layer_channels(base, s.model),
            )
            for s in students
        ),
        agent=outcome.agent,
        episodes=outcome.episodes,
        evaluations=outcome.evaluations,
        search_wall_s=outcome.wall_s,
        finetune_epochs=ft_epochs if ft_epochs is not None else config.finetune_epochs,
        finetune_wall_s=ft_wall,
        pareto=tuple((m, prefix.then(p).to_json()) for m, p in outcome.pareto),
        candidates=tuple(outcome.candidates),
        seed=config.seed,
        classes=config.classes,
        max_drop=config.max_drop,
        probes=outcome.probes,
        channel_multiple=outcome.channel_multiple,
        measure=val_measure,
        device=hardware.label,
        finetune_precision=ft_precision,
        time_budget=budget.to_json() if budget is not None else None,
    )
    # the students as the user's teacher was: a single-score head gets its single score back
    return CompressResult(teacher_metrics, tuple(replace(s, model=binary_head.restore_single_score(s.model)) for s in students), report)


@dataclass(frozen=True)
class SearchOutcome:
    choices: tuple[tuple[Target, Plan, float | None], ...]  # (target, plan, accuracy before fine-tuning)
    pareto: tuple[tuple[ModelMetrics, Plan], ...]
    candidates: tuple[ModelMetrics, ...]
    agent: str
    episodes: int
    evaluations: int
    wall_s: float
    probes: tuple[tuple, ...] = ()  # per target: the structure families' probes (search/structure.py)
    channel_multiple: int = 1  # the width grid the search snapped to


# episodes per target when the user does not say: enough for the agents to beat the baselines on
# ResNet-8 (bench/search_bench.py) while the search stays within minutes on 2 cores
DEFAULT_EPISODES = {"ddpg": 60, "reinforce": 60, "haq": 40, "random": 60, "uniform": 12, "greedy": 40}


def search_config_for(config: CompressConfig, save_policy=None, load_policy=None, hardware=None):  # noqa: ANN001 - a compiler.device.Device
    """The SearchConfig compress searches its first structure family with (before the uniform
    baseline picks the channel criterion, see _uniform_baseline): the agent, episodes, seed,
    validation and calibration sizes, widths and policy files of `config`. Benchmarks that
    study the search (bench/transfer_bench.py) start from it, so they search as compress does."""
    from onnxcompress.compiler.hardware import channel_multiple
    from onnxcompress.search.driver import SearchConfig

    agent = config.agent or _default_agent(config.targets[0])
    episodes = config.episodes or DEFAULT_EPISODES.get(agent, 40)
    return SearchConfig(
        agent=agent,
        episodes=episodes,
        targets=config.targets,
        seed=config.seed,
        val_limit=config.val_size,
        calib_limit=config.calib_size,
        load_policy=str(load_policy) if load_policy else None,
        save_policy=str(save_policy) if save_policy else None,
        # widths that keep onnxruntime's fast convolution path: the student must be faster in
        # reality, not only on paper (compiler/hardware.py). Measured on this CPU: ResNet-20 and
        # ResNet-8 uniformly pruned to 0.5x MACs with free widths (11/23/45 channels) run 1.2x
        # the teacher's time at batch 32; users of runtimes without blocked kernels pass 1
        channel_multiple=config.channel_multiple if config.channel_multiple is not None else channel_multiple(),
        # data-driven channel choice: measured better than filter norms after refitting (ResNet-8
        # at 0.49x MACs, no fine-tuning: 53.2 % vs 48.5 % top-1); checked per model below
        criterion=CRITERIA[0],
        providers=hardware.providers if hardware is not None else ("CPUExecutionProvider",),
    )


def _search(base: onnx.ModelProto, teacher: onnx.ModelProto, job: JobData, config: CompressConfig, save_policy, load_policy,
            hardware=None, budget: TimeBudget | None = None) -> SearchOutcome:  # noqa: ANN001 - a compiler.device.Device
    from onnxcompress.search import depth, structure
    from onnxcompress.search.driver import run_search
    from onnxcompress.search.executors import ExecutorConfig

    search_config = search_config_for(config, save_policy, load_policy, hardware)
    agent, episodes = search_config.agent, search_config.episodes
    executor = ExecutorConfig(kind="ray" if config.executor == "ray" else "local", workers=config.workers, ray_address=config.ray_address)
    structural = all(t.size is None for t in config.targets)
    baseline, baselines = None, []
    search_start = time.perf_counter()
    search_allowance = budget.allow("search", SEARCH_SHARE) if budget is not None else None
    eval_s = None
    if structural and agent != "uniform" and all(t.latency is None for t in config.targets):
        # (latency targets: the search's measured latency model decides, not a MACs-uniform plan)
        t0 = time.perf_counter()
        search_config, baseline, baselines = _uniform_baseline(base, job, search_config)
        eval_s = (time.perf_counter() - t0) / max(1, sum(b.evaluations for b in baselines))
    # structure families (search/structure.py, search/depth.py): searches with residual blocks
    # removed first, judged by a short fine-tune; for structural targets, when the student will
    # be fine-tuned. For a MACs target, the blocks whose removal alone changes the teacher's
    # outputs least, up to all and half of the reduction asked for; otherwise the largest blocks
    # one at a time. Agents that decide removals themselves (reinforce) get them too: judged
    # without fine-tuning, their removal stage learns to keep every unit (bench/results/search.md)
    fams: list[tuple[str, ...]] = [()]
    if structural and config.finetune_epochs > 0:
        macs_target = config.targets[0].macs
        if macs_target is not None:
            fams, ranking = depth.depth_families(base, job.val.x, macs_target, config.families)
            if len(fams) > 1:
                _say(config.progress, "blocks ranked by what removing each alone changes (least first): "
                     + ", ".join(f"{d.block} {d.kl:.3g}" for d in ranking[:12]) + (" ..." if len(ranking) > 12 else ""))
        else:
            fams = structure.families(base, config.families)
    fam_episodes = {(): episodes}
    for removed in fams[1:]:
        fam_episodes[removed] = max(12, episodes // 3)
    if budget is not None and eval_s is not None and config.episodes is None:
        left = max(0.0, search_allowance - (time.perf_counter() - search_start))
        per_eval = eval_s * 1.3  # an episode's evaluation plus the agent's own work
        for removed in fams:
            fam_episodes[removed] = budget_episodes(left, per_eval, len(fams), fam_episodes[removed])
        budget.note(f"search: {eval_s:.1f} s per evaluation measured; episodes per family "
                    + ", ".join(f"{'+'.join(r) or 'channels'}: {n}" for r, n in fam_episodes.items()))
    results = []
    for removed in fams:
        fam_config = replace(search_config, removed=removed, episodes=fam_episodes[removed],
                             save_policy=search_config.save_policy if not removed else None)
        name = "search" if not removed else "search-" + "-".join(removed)
        ckpt = str(config.checkpoint_dir / name) if config.checkpoint_dir is not None else None
        if removed:
            _say(config.progress, f"searching with {', '.join(removed)} removed ({fam_config.episodes} episodes)")
        try:
            results.append((removed, run_search(base, job.val, job.calibration, fam_config, executor=executor, checkpoint_dir=ckpt,
                                                progress=config.progress)))
        except UsageError:
            if not removed:
                raise
            continue  # e.g. a target this family cannot reach: the other families still count
    main = results[0][1]
    searched = results + [((), b) for b in baselines]  # every evaluated plan counts (front, evaluations)

    def metrics(m) -> ModelMetrics:
        return ModelMetrics(m.macs, m.params, m.size_bytes, m.accuracy, None)

    if budget is not None:
        budget.record("search", time.perf_counter() - search_start)
    choices, probes = [], []
    probe_start = time.perf_counter()
    probe_samples = structure.PROBE_SAMPLES
    if budget is not None:
        n_probes = sum(1 for k in range(len(config.targets)) if sum(1 for _, r in results if r.best[k].plan is not None) > 1)
        probe_allowance = budget.allow("probes", PROBE_SHARE)
        probe_samples = _probe_samples(base, teacher, job, config, hardware, probe_allowance, max(1, n_probes * len(fams)))
        budget.note(f"probes: {probe_samples} training images each")
    # probes only run with several families, which need fine-tuning (epochs >= 1)
    # probes see a few thousand images: in batches of 16 (more steps), on one thread
    ft_config = (finetune_config(config.finetune_epochs, config.seed, config.classes, hardware.torch if hardware is not None else "cpu",
                                 precision=config.train_precision)
                 if config.finetune_epochs > 0 else None)
    for k, tgt in enumerate(config.targets):
        options = [(removed, r.best[k]) for removed, r in results if r.best[k].plan is not None]
        if baseline is not None and baseline.best[k].plan is not None:
            # the uniform plan stands in for the channel-only family's search when it scores higher
            own = next((b for removed, b in options if not removed), None)
            if own is None or (baseline.best[k].metrics.accuracy or 0.0) > (own.metrics.accuracy or 0.0):
                options = [((), baseline.best[k])] + [(removed, b) for removed, b in options if removed]
        if not options:
            # nothing the search tried fits: fall back to uniform pruning to the target's MACs
            choices.append((tgt, _uniform_plan(base, tgt), None))
            probes.append(())
            continue
        if len(options) == 1:
            removed, best = options[0]
            choices.append((tgt, Plan.from_json(best.plan), best.metrics.accuracy if best.metrics else None))
            probes.append(())
            continue
        scored, students = [], []
        for removed, best in options:
            student = apply_plan(base, Plan.from_json(best.plan), calibration=job.calibration, seed=config.seed)
            acc = structure.probe_accuracy(student, teacher, job.train, job.val, ft_config, probe_samples)
            label = ", ".join(removed) + " removed" if removed else "channels only"
            _say(config.progress, f"probe {tgt.label()} [{label}]: {100 * acc:.2f}% after a short fine-tune "
                                  f"({100 * (best.metrics.accuracy or 0):.2f}% before), MACs {best.metrics.macs:,}")
            scored.append(structure.Probe(removed, best.plan, best.metrics.accuracy, acc, best.metrics.macs))
            students.append(student)
        # the students' speed, measured side by side with the base: among statistically tied
        # probes the faster student wins
        lat = compare_latency([base, *students], job.val.x[:32], rounds=3)
        speed = {i: lat[0].batch32 / l.batch32 for i, l in enumerate(lat[1:]) if l.batch32 > 0}
        scored = [replace(p, speedup=speed.get(i)) for i, p in enumerate(scored)]
        pick = structure.choose(scored, len(job.val), speed)
        _say(config.progress, f"structure for {tgt.label()}: " + ("channels only" if not pick.removed else f"{len(pick.removed)} blocks removed")
             + f" (probe {100 * pick.probe_accuracy:.2f}%, {speed.get(scored.index(pick), 0):.2f}x faster at batch 32)")
        choices.append((tgt, Plan.from_json(pick.plan), pick.search_accuracy))
        probes.append(tuple(scored))
    if len(searched) > 1:
        from onnxcompress.search.pareto import pareto_front, unique

        pareto = pareto_front(unique(c for _, r in searched for c in r.candidates), config.targets[0].primary)
    else:
        pareto = list(main.pareto)
    if budget is not None:
        budget.record("probes", time.perf_counter() - probe_start)
    return SearchOutcome(
        choices=tuple(choices),
        pareto=tuple((metrics(c.metrics), Plan.from_json(c.plan)) for c in pareto),
        candidates=tuple(metrics(c.metrics) for _, r in searched for c in r.candidates if c.metrics.feasible),
        agent=agent,
        episodes=sum(r.episodes for _, r in searched),
        evaluations=sum(r.evaluations for _, r in searched),
        wall_s=time.perf_counter() - search_start,  # baseline, block ranking, searches and probes
        probes=tuple(probes),
        channel_multiple=search_config.channel_multiple,
    )


# channel criteria compress chooses between, the first preferred on ties (passes/importance.py)
CRITERIA = ("activation", "l1")


def _uniform_baseline(base: onnx.ModelProto, job: JobData, search_config):
    """(search_config with its criterion chosen, the uniform search with that criterion, the
    uniform searches of every criterion).

    The uniform plan (one keep ratio for every group, on the search's width grid) is evaluated
    with each criterion of CRITERIA on the validation images, one evaluation each. The criterion
    whose uniform plans score best is the one the search uses, and those uniform plans compete
    with the search's channel-only plans: compress never returns a channel plan that scores below,
    on its own validation images, the baseline its search is centred on. Measured why: on
    ResNet-8 the activation criterion's uniform plan scores 53.3 % vs l1's 49.9 % (search
    benchmark's validation images, no fine-tuning); on the reference ResNet-20 of bench/peers
    76.7 % vs 78.4 %, and DDPG's best plan of 99 evaluations there (75.8 %) was below both."""
    from onnxcompress.search.driver import run_search

    best, results = None, []
    for criterion in CRITERIA:
        cfg = replace(search_config, agent="uniform", episodes=1, criterion=criterion, save_policy=None, load_policy=None)
        result = run_search(base, job.val, job.calibration, cfg, progress=False)
        results.append(result)
        score = sum((b.metrics.accuracy or 0.0) for b in result.best if b.metrics is not None)
        if best is None or score > best[0]:
            best = (score, criterion, result)
    _, criterion, result = best
    return replace(search_config, criterion=criterion), result, results


def _sample_seconds(student: onnx.ModelProto, teacher: onnx.ModelProto, job: JobData, ft_config: FinetuneConfig) -> float:
    """Seconds per training image of `ft_config`'s recipe on this machine: after a warm-up run,
    two short runs of 2 and 6 batches, so that what every run pays once (building the PyTorch
    modules, recalibrating BatchNorm) is not spread over the images. An estimate: the trainer's
    time limit corrects the plan after the first epoch. (Timing one short run overestimated the
    ResNet-56 student's epoch by ~45 %; two runs without a warm-up underestimated it by ~40 %.)"""
    warm = job.train.take(np.arange(min(len(job.train), ft_config.batch_size)))
    finetune(student, teacher, warm, None, replace(ft_config, epochs=1, patience=None), progress=False)
    times = []
    for batches in (2, 6):
        n = min(len(job.train), batches * ft_config.batch_size)
        sub = job.train.take(np.arange(n))
        t0 = time.perf_counter()
        finetune(student, teacher, sub, None, replace(ft_config, epochs=1, patience=None), progress=False)
        times.append((n, time.perf_counter() - t0))
    (n1, t1), (n2, t2) = times
    per_image = (t2 - t1) / (n2 - n1) if n2 > n1 else t2 / max(n2, 1)
    return per_image if per_image > 0 else t2 / max(n2, 1)


def _probe_samples(base: onnx.ModelProto, teacher: onnx.ModelProto, job: JobData, config: CompressConfig, hardware,
                   seconds: float, probes: int) -> int:
    """Training images per structure probe that fit `seconds` for `probes` probes (at most the
    usual PROBE_SAMPLES, at least 500), from a timed run of the probes' recipe on the base."""
    from onnxcompress.search import structure

    probe_config = finetune_config(1, config.seed, config.classes, hardware.torch if hardware is not None else "cpu",
                                   precision=config.train_precision)
    per_image = _sample_seconds(base, teacher, job, probe_config)
    val_s = per_image * len(job.val) / 3  # the probe scores the validation images once (forward only)
    fit = int((seconds / probes - val_s) / per_image) if per_image > 0 else structure.PROBE_SAMPLES
    return max(500, min(structure.PROBE_SAMPLES, fit))


def _fit_finetune(student: onnx.ModelProto, teacher: onnx.ModelProto, job: JobData, ft_config: FinetuneConfig, budget: TimeBudget,
                  targets_left: int, config: CompressConfig) -> tuple[FinetuneConfig, Dataset]:
    """(the fine-tuning recipe with its epochs, the training images) that fit this target's share
    of the time left: as many epochs as fit over all the images (up to MAX_BUDGET_EPOCHS), else one
    epoch over a seeded random subset. Timed on this machine with the recipe itself."""
    allowance = budget.finetune_allowance() / max(1, targets_left)
    per_image = _sample_seconds(student, teacher, job, ft_config)
    # each epoch also scores the validation images (forward only) and recalibrates BatchNorm
    epoch_s = per_image * (len(job.train) + len(job.val) / 3)
    epochs, samples = epochs_within(allowance, epoch_s / len(job.train), len(job.train), MAX_BUDGET_EPOCHS)
    budget.note(f"fine-tuning: {1000 * per_image:.1f} ms per training image measured, {allowance:.0f} s left for it: "
                f"{epochs} epoch{'s' if epochs != 1 else ''} over {samples:,} of {len(job.train):,} images")
    train = job.train
    if samples < len(train):
        train = train.take(np.sort(np.random.default_rng(config.seed).permutation(len(train))[:samples]))
    # the plan is an estimate: after each epoch the trainer re-plans the epochs still to come
    # from the measured epoch time, fewer or more, to fit its time limit (what is left now that
    # the timing runs are done)
    return replace(ft_config, epochs=epochs, time_limit_s=max(1.0, budget.finetune_allowance() / max(1, targets_left))), train


MAX_BUDGET_EPOCHS = 30  # a time budget larger than this many epochs needs ends early instead


def _uniform_plan(base: onnx.ModelProto, target: Target) -> Plan:
    """The uniform ratio whose predicted MACs/params meet the target (bisection on the exact
    cost model); used only when the search found nothing within the target."""
    from onnxcompress.passes.prune_channels import uniform_ratio

    ratio = uniform_ratio(analyze(import_graph(base)), macs=target.macs, params=target.params)
    return Plan.from_json({"passes": [{"pass": "prune_channels", "ratio": ratio, "reconstruct": True}]})


def _choose_measure(job: JobData, teacher_scores: np.ndarray, teacher_pred: np.ndarray, own_val_data: bool,
                    progress: bool) -> tuple[JobData, Measure]:
    """The measure every accuracy of the run is on (the search's rewards, the structure probes, the
    fine-tune's epoch choice, the Pareto front, the budget verdict): top-1 against the labels, or
    agreement with the teacher's predictions when there are no labels or the teacher fits the
    validation images (compiler/teacher_fit.py). Agreement is measured by giving the validation
    images the teacher's predictions as labels: every stage then measures it without knowing."""
    n = len(job.val)
    if job.val.y is None:
        return job, Measure("agreement", job.val_images, n, "the data has no labels")
    fit = teacher_fit(teacher_scores, job.val.y)
    if fit is None or not fit.fits:
        return job, Measure("top1", job.val_images, n)
    seen = (f"the teacher scores {100 * fit.top1:.2f}% top-1 on the {job.val_images} (label cross-entropy "
            f"{fit.cross_entropy:.3g})")
    if own_val_data:
        _say(progress, f"warning: {seen}: it fits them (were they among its training images?), so top-1 there says little "
                       "about new images; the budget, the search and the report use agreement with the teacher instead. "
                       "Pass images the teacher was not trained on with --val-data to judge top-1.")
        note = ("the teacher fits these images: accuracy there is not a test accuracy; pass images the teacher was "
                "not trained on with --val-data to judge top-1")
    else:
        _say(progress, f"warning: {seen}: they are probably its training images, so top-1 there measures fidelity to a "
                       "teacher that memorised them, not accuracy; the budget, the search and the report use agreement "
                       "with the teacher instead. Pass held-out images with --val-data to judge top-1.")
        note = ("the teacher fits these images, probably its training data: accuracy there is not a test accuracy; "
                "pass held-out images with --val-data to judge top-1")
    val = Dataset(x=job.val.x, y=np.asarray(teacher_pred, dtype=np.int64))
    return replace(job, val=val), Measure("agreement", job.val_images, n, note, fit.to_json())


def _accuracy_note(student: float | None, teacher: float | None, drop: float, m: Measure) -> str:
    """A student's accuracy next to the teacher's, naming the measure and the images."""
    s, t = 100 * (student or 0.0), 100 * (teacher or 0.0)
    if m.kind == "top1":
        return f"accuracy {s:.2f}% ({0.0 - drop:+.2f} points vs the teacher's {t:.2f}%) on {m.images}"
    return f"agreement with the teacher {s:.2f}% ({0.0 - drop:+.2f} points vs the teacher's own {t:.2f}%) on {m.images}"


def _budget_note(drop: float, max_drop: float, m: Measure) -> str:
    if m.kind == "top1":
        return f"; the accuracy budget of {max_drop} points was NOT met at this target: a larger target (see the Pareto front) keeps more accuracy"
    text = (f"; it disagrees with the teacher on {drop:.2f}% of these images, more than the budget of {max_drop} points "
            "(judged on agreement, which bounds the top-1 it loses on them")
    if m.fit is not None:  # the teacher fits the images: top-1 on new images is what the user wants
        return text + "; on images the teacher has not seen the loss is usually smaller: pass them with --val-data to judge top-1)"
    return text + "): a larger target (see the Pareto front) keeps more agreement"


def accuracy_drop(teacher: float | None, student: float | None) -> float:
    """Points of top-1 lost, rounded so that a budget of exactly the loss counts as met
    (accuracies are counts over the validation set, and 0.789 - 0.774 is 0.015000000000000013)."""
    return round(100.0 * ((teacher or 0.0) - (student or 0.0)), 9)


def plan_is_empty(plan: Plan) -> bool:
    return len(plan.steps) == 0


def split_terminal(plan: Plan) -> tuple[Plan, Plan]:
    """(the steps before the first terminal step, that step and the rest): the tail runs after
    fine-tuning (PassSpec.terminal: quantization, whose structural predecessors read float
    weights and whose calibration reads the tuned ones)."""
    first = next((i for i, s in enumerate(plan.steps) if get_pass(s.name).terminal), len(plan.steps))
    return Plan(plan.steps[:first]), Plan(plan.steps[first:])


def _meets(m: ModelMetrics, t: ModelMetrics, target: Target) -> bool:
    ok = True
    if target.macs is not None:
        ok &= m.macs <= target.macs * t.macs * 1.0001
    if target.params is not None:
        ok &= m.params <= target.params * t.params * 1.0001
    if target.size is not None:
        ok &= m.size_bytes <= target.size * t.size_bytes
    if target.latency is not None and m.latency_ms is not None and t.latency_ms is not None:
        # latency is measured on a noisy machine: a 10 % tolerance
        ok &= m.latency_ms.batch32 <= target.latency * t.latency_ms.batch32 * 1.1
    return bool(ok)


def _quantize_for_size(student: onnx.ModelProto, target: Target, teacher: ModelMetrics, job: JobData, config: CompressConfig):
    """int8 everywhere when that meets the size target, else int4 weights where needed."""
    for bits in (8, 4):
        plan = Plan.from_json({"passes": [{"pass": "quantize", "bits": bits}]})
        q = apply_plan(student, plan, calibration=job.calibration, seed=config.seed)
        if q.ByteSize() <= target.size * teacher.size_bytes:
            return q, plan
    return q, plan


def _slower_note(student: Latency | None, teacher: Latency | None, channel_multiple: int) -> str:
    """Fewer MACs that run slower: said in the note, since speed is what the user came for."""
    if student is None or teacher is None or student.batch32 <= teacher.batch32:
        return ""
    why = (" (channel counts that are not multiples of this CPU's kernel block run on slower kernels: leave "
           "--channel-multiple at its default)" if channel_multiple == 1 else "")
    return f"; it runs SLOWER than the teacher in onnxruntime on this CPU ({teacher.batch32 / student.batch32:.2f}x speed at batch 32){why}"


def small_validation_note(samples: int, max_drop: float) -> str | None:
    """A warning when one validation image moves the accuracy by more than the accuracy budget:
    then the budget cannot be judged (4 images: 25 points per image)."""
    step = 100.0 / max(samples, 1)
    if step <= max_drop:
        return None
    return (f"note: each of the {samples} validation samples is {step:.2g} accuracy points, more than the "
            f"--max-drop budget of {max_drop:g}; accuracies and the budget check are that coarse "
            f"(give more --data or a --val-data set)")


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)
