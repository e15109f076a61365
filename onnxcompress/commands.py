"""The commands behind the command line: each reads its inputs (checked, one-line errors), calls
the compiler, writes its outputs (atomically, and never half: onnxcompress/interrupts.py) and prints
what it did. onnxcompress/cli.py parses the options and turns errors into exit statuses; the
compiler knows nothing of either. Heavy modules (torch, onnxruntime) are imported inside the
commands, so `--help` and option errors stay fast."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from onnxcompress import interrupts
from onnxcompress.budget import parse_duration
from onnxcompress.errors import UsageError


def check_output_path(output: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> Path:
    """-o must not be an input and its folder must exist (checked before any work starts)."""
    out = Path(output)
    for inp in inputs:
        if inp is not None and out.resolve() == Path(inp).resolve():
            raise UsageError(f"-o {out} is the input file; refusing to overwrite the input model")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"output folder '{folder}' does not exist; create it first")
    if out.is_dir():
        raise UsageError(f"-o {out} is a directory; give a file name like {out / 'student.onnx'}")
    return out


def load_input_model(path, args, data=None, needs_scores=None):
    """Reads a model given on the command line as the compiler works on it (compiler.data.
    as_classifier: a dynamic height/width pinned to --input-size or the `.npz` images, with a note;
    a sigmoid head as two classes; `needs_scores`, the command's name, when it reads the output as
    class scores: a model that is not a classifier is refused), validated before any data is read
    (its errors would otherwise be about the wrong thing)."""
    from onnxcompress.compiler.data import as_classifier
    from onnxcompress.compiler.onnx_io import load_model, validate_classifier

    model, note = as_classifier(load_model(path), data, getattr(args, "input_size", None), Path(path).name, getattr(args, "classes", None),
                                needs_scores=needs_scores)
    if note:
        print(note, file=sys.stderr)
    validate_classifier(model)
    return model


def preprocessing_note(args, model, data) -> None:
    """When the user chose no preprocessing and the model records none, says so if another usual
    convention makes the model clearly more accurate on the data (compiler/preprocess_probe.py)."""
    from onnxcompress.compiler.data import Preprocess
    from onnxcompress.compiler.preprocess_probe import suggest

    if any(getattr(args, k, None) is not None for k in ("scale", "mean", "std", "bgr")) or Preprocess.recorded_in(model):
        return
    note = suggest(model, data, Preprocess.from_model(model))
    if note:
        print(note, file=sys.stderr, flush=True)


def preprocess_from_args(args, model):
    """The model's preprocessing with the --scale/--mean/--std/--bgr of a command."""
    from onnxcompress.api import preprocess_for
    from onnxcompress.config import parse_float_list

    return preprocess_for(
        model,
        scale=args.scale,
        mean=None if args.mean is None else parse_float_list(args.mean, "--mean"),
        std=None if args.std is None else parse_float_list(args.std, "--std"),
        bgr=args.bgr,
    )


def cmd_inspect(args) -> int:
    from onnxcompress.compiler.inspection import format_inspection, inspect_model

    # the model is handed over (consume): canonicalised in place, one copy of its weights in memory
    doc, analysis = inspect_model(Path(args.model).name, load_input_model(args.model, args), consume=True)
    print(json.dumps(doc, indent=1) if args.json else format_inspection(doc, analysis))
    return 0


def cmd_apply(args) -> int:
    from onnxcompress import api
    from onnxcompress.compiler.onnx_io import save_model_atomic
    from onnxcompress.passes import Plan

    out = check_output_path(args.output, [args.model, args.plan])
    plan = Plan.load(args.plan, student=args.student)
    original = load_input_model(args.model, args, args.data)
    if args.data:
        preprocessing_note(args, original, args.data)
    preprocess = preprocess_from_args(args, original)
    from onnxcompress.compiler.cost import model_cost
    from onnxcompress.compiler.onnx_io import canonicalize

    # canonicalised once, in place: from here on the canonical model is the only copy of the weights
    canonical = canonicalize(original, in_place=True)
    del original
    before = model_cost(canonical)
    student = api.apply_canonical(canonical, plan, data=args.data, preprocess=preprocess, seed=args.seed)  # a sigmoid head restored
    del canonical
    with interrupts.committing():
        save_model_atomic(student, out)
    after = model_cost(student)
    print(f"wrote {out}: MACs {after.macs:,} ({after.macs / max(before.macs, 1):.3f}x), params {after.params:,} ({after.params / max(before.params, 1):.3f}x), {after.size_bytes:,} bytes")
    return 0


def cmd_eval(args) -> int:
    from onnxcompress import api
    from onnxcompress.config import parse_int_list

    model = load_input_model(args.model, args, args.data, needs_scores="eval")
    teacher = load_input_model(args.teacher, args, args.data, needs_scores="eval") if args.teacher else None
    classes = parse_int_list(args.classes, "--classes") if args.classes else None
    ds = api.read_data(args.data, model, preprocess_from_args(args, model), limit=args.limit)
    if not classes:
        preprocessing_note(args, model, args.data)
    result = api.evaluate(model, ds, teacher=teacher, classes=classes)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        acc = "n/a (no labels)" if result.accuracy is None else f"{100 * result.accuracy:.2f}%"
        print(f"{args.model}: top-1 {acc} on {result.samples} samples")
        if result.agreement is not None:
            print(f"  agreement with teacher: {100 * result.agreement:.2f}%")
        print(f"  MACs {result.macs:,}  params {result.params:,}  size {result.size_bytes:,} bytes")
        print(f"  onnxruntime latency: batch 1 {result.latency_ms.batch1:.3f} ms, batch 32 {result.latency_ms.batch32:.3f} ms")
    return 0


def _outputs_for(args, model_path: Path, n_targets: int) -> list[Path]:
    first = Path(args.output) if args.output else model_path.with_name(model_path.stem + ".compressed.onnx")
    outs = [first] + [first.with_name(f"{first.stem}.{i + 1}{first.suffix}") for i in range(1, n_targets)]
    return [check_output_path(o, [model_path]) for o in outs]


def cmd_compress(args) -> int:
    from onnxcompress.config import CompressConfig, parse_int_list
    from onnxcompress.search.targets import Target

    # validate the cheap things before importing the heavy pipeline (torch): bad options fail fast
    for t in args.target:
        Target.parse(t)
    if args.classes:
        parse_int_list(args.classes, "--classes")
    from onnxcompress.compiler.device import resolve_device

    resolve_device(args.device)  # --device cuda on a machine without CUDA: refused before any work
    from onnxcompress.compiler.onnx_io import save_model_atomic
    from onnxcompress.pipeline import compress, interruptible
    from onnxcompress.report import summary_table, write_report

    model_path = Path(args.model)
    targets = [Target.parse(t) for t in args.target]
    outputs = _outputs_for(args, model_path, len(targets))
    report_path = None
    if args.report:
        report_path = check_output_path(args.report, [model_path])
    original = load_input_model(model_path, args, args.data, needs_scores="compress")
    if not args.classes:
        preprocessing_note(args, original, args.data)
    ckpt = Path(str(outputs[0]) + ".checkpoint")
    if ckpt.exists() and not args.resume:
        shutil.rmtree(ckpt, ignore_errors=True)
    ckpt.mkdir(exist_ok=True)
    config = CompressConfig(
        targets=tuple(targets),
        max_drop=args.max_drop,
        classes=parse_int_list(args.classes, "--classes") if args.classes else None,
        agent=args.agent,
        episodes=args.episodes,
        finetune_epochs=args.finetune_epochs,
        seed=args.seed,
        workers=args.workers,
        executor=args.executor,
        ray_address=args.ray_address,
        checkpoint_dir=ckpt,
        progress=not args.quiet,
        families=args.families,
        channel_multiple=args.channel_multiple,
        device=args.device,
        train_precision=args.train_precision,
        time_budget_s=parse_duration(args.time_budget) if args.time_budget else None,
    )
    preprocess = preprocess_from_args(args, original)
    with interruptible():
        result = compress(original, args.data, config, val_data=args.val_data, preprocess=preprocess,
                          save_policy=args.save_policy, load_policy=args.load_policy, name=model_path.name)
    students = []
    report = result.report
    with interrupts.committing():
        for s, out in zip(result.students, outputs):
            save_model_atomic(s.model, out)  # compress gives a sigmoid head back
            students.append(out)
        report = replace(report, students=tuple(replace(r, output=str(o)) for r, o in zip(report.students, students)))
        if report_path is not None:
            write_report(report, report_path)
        shutil.rmtree(ckpt, ignore_errors=True)
    print(f"Accuracy: {report.measure.describe()}.")
    print(summary_table(report))
    for s, out in zip(result.students, students):
        print(f"wrote {out}: {s.note}")
    if report_path is not None:
        print(f"report: {report_path} (+ .md, .png)")
    return 0 if all(s.feasible for s in result.students) else 0


def cmd_finetune(args) -> int:
    from onnxcompress.compiler.binary_head import restore_single_score
    from onnxcompress.config import parse_int_list
    from onnxcompress.compiler.data import InputSpec, Preprocess, load_data
    from onnxcompress.compiler.kd import KDConfig
    from onnxcompress.compiler.onnx_io import canonicalize, num_classes, save_model_atomic
    from onnxcompress.pipeline import finetune_config, interruptible
    from onnxcompress.compiler.device import resolve_device
    from onnxcompress.compiler.trainer import finetune

    hardware = resolve_device(args.device, evaluates=False)
    out = check_output_path(args.output, [args.model, args.teacher])
    student = load_input_model(args.model, args, args.data, needs_scores="finetune")
    teacher_model = load_input_model(args.teacher, args, args.data, needs_scores="finetune")
    if not args.classes and not Preprocess.recorded_in(student):
        preprocessing_note(args, teacher_model, args.data)
    teacher = canonicalize(teacher_model)
    # teacher and student read the same inputs: those the student was built for (apply, compress
    # and finetune record them), else the teacher's; flags override either
    preprocess = preprocess_from_args(args, student if Preprocess.recorded_in(student) else teacher_model)
    classes = parse_int_list(args.classes, "--classes") if args.classes else None
    spec = InputSpec.from_model(teacher)
    n = num_classes(teacher)
    train = load_data(args.data, spec, preprocess, classes=classes, num_classes=n)
    val = load_data(args.val_data, spec, preprocess, classes=classes, num_classes=n) if args.val_data else None
    kinds = tuple(k.strip() for k in args.kd.split(",") if k.strip())
    config = replace(
        # compress's recipe for this much data (batch 64 on every core from LARGE_DATA images)
        finetune_config(args.epochs, args.seed, classes, hardware.torch, samples=len(train), precision=args.train_precision),
        kd=KDConfig(kinds=kinds),
    )
    ckpt = Path(str(out) + ".checkpoint")
    if ckpt.exists() and not args.resume:
        shutil.rmtree(ckpt, ignore_errors=True)
    ckpt.mkdir(exist_ok=True)
    with interruptible():
        tuned, result = finetune(student, teacher, train, val, config, checkpoint_dir=ckpt, progress=not args.quiet)
    with interrupts.committing():
        save_model_atomic(restore_single_score(preprocess.stamp(tuned)), out)
        shutil.rmtree(ckpt, ignore_errors=True)
    best = "n/a" if result.best_val_accuracy is None else f"{100 * result.best_val_accuracy:.2f}%"
    start = "n/a" if result.initial_val_accuracy is None else f"{100 * result.initial_val_accuracy:.2f}%"
    print(f"wrote {out}: validation top-1 {start} -> {best} after {result.epochs_run} epochs ({result.wall_s:.1f} s, {result.precision} training)")
    return 0


def cmd_demo(args) -> int:
    from onnxcompress.compiler.onnx_io import save_model_atomic
    from onnxcompress.config import CompressConfig
    from onnxcompress.pipeline import compress, interruptible
    from onnxcompress.report import summary_table, write_report
    from onnxcompress.models.demo import demo_data_paths, demo_teacher_path

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher_path = demo_teacher_path()
    train_path, test_path = demo_data_paths()
    print(f"onnxcompress demo: bundled Fashion-MNIST teacher {teacher_path.name}, compressing to ~1/3 of its MACs", file=sys.stderr)
    config = CompressConfig.from_options("macs=0.33", max_drop=1.0, episodes=8 if args.quick else None,
                                         finetune_epochs=1 if args.quick else 6, seed=args.seed)
    with interruptible():
        result = compress(teacher_path, train_path, config, val_data=test_path, name="demo_teacher.onnx")
    with interrupts.committing():
        student_path = save_model_atomic(result.model, out_dir / "student.onnx")
        report = replace(result.report, students=tuple(replace(r, output=str(student_path)) for r in result.report.students))
        jp, md, png = write_report(report, out_dir / "report.json")
    print(f"Accuracy: {report.measure.describe()}.")
    print(summary_table(report))
    print(f"\nwrote {student_path}, {jp}, {md}, {png}")
    print(result.students[0].note)
    return 0


HANDLERS = {
    "compress": cmd_compress,
    "inspect": cmd_inspect,
    "apply": cmd_apply,
    "finetune": cmd_finetune,
    "eval": cmd_eval,
    "demo": cmd_demo,
}
