"""The `onnxcompress` command line (DESIGN.md's contract). Thin: parses and validates options,
calls onnxcompress.api, prints. Errors are one line on stderr with a distinct exit status; a
traceback only with --debug."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from onnxcompress import interrupts
from onnxcompress.errors import CompressError, UsageError
from onnxcompress.interrupts import EXIT_INTERRUPTED

COMMANDS = ("compress", "inspect", "apply", "finetune", "eval", "demo")
EXIT_INTERNAL = 70
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process ended by SIGPIPE


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line) instead of printing usage and exiting 2."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_preprocess(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("preprocessing of uint8 images: x*scale, then (x-mean)/std (default: model metadata, else x/255)")
    g.add_argument("--scale", type=float, default=None)
    g.add_argument("--mean", default=None, help="a,b,c (in the model's channel order)")
    g.add_argument("--std", default=None, help="a,b,c (in the model's channel order)")
    g.add_argument("--bgr", action="store_const", const=True, default=None,
                   help="the model reads BGR (Caffe/OpenCV exports): reverse the RGB images' channels first")


def _input_size(text: str) -> tuple[int, int]:
    """`--input-size 224x224` (also `224,224`, or `224` for a square)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
        if len(parts) > 2 or h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH like 224x224, got {text!r}") from None
    return h, w


def _add_input_size(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-size", type=_input_size, default=None, metavar="HxW",
                   help="for models exported with a dynamic height/width: the size to compress and measure at "
                        "(default: the size of the --data images); the output keeps that fixed size")


def _add_compress_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="teacher ONNX model")
    p.add_argument("--data", required=True, help="training data: .npz (x, y) or an image folder")
    p.add_argument("--val-data", default=None, help="validation data (default: a split of --data)")
    p.add_argument("-o", "--output", default=None, help="student ONNX (default: MODEL.compressed.onnx)")
    p.add_argument("--target", action="append", required=True, help="macs=0.5[,params=0.3][,latency=0.5][,size=0.25]; repeat for several students")
    p.add_argument("--max-drop", type=float, default=1.0, help="accuracy points the student may lose (default 1.0)")
    p.add_argument("--classes", default=None, help="keep only these outputs, in this order: 0,3,7")
    p.add_argument("--agent", default=None, help="search agent (default: chosen from the target)")
    p.add_argument("--episodes", type=int, default=None)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--executor", default="local", choices=None)
    p.add_argument("--ray-address", default=None)
    p.add_argument("--report", default=None, help="REPORT.json (also writes REPORT.md and REPORT.png)")
    p.add_argument("--resume", action="store_true", help="resume an interrupted run from its checkpoint")
    p.add_argument("--families", type=int, default=3,
                   help="structure families to explore: channel cuts alone and with each of the N-1 largest residual blocks "
                        "removed, chosen by a short fine-tune (1: channel cuts only)")
    p.add_argument("--channel-multiple", type=int, default=None,
                   help="kept channel counts are multiples of N when the budget allows (default: onnxruntime's blocked-kernel "
                        "width on this CPU, 16 with AVX-512, 8 with AVX2, so the student is really faster); 1: any width, "
                        "for runtimes without blocked kernels (e.g. microcontrollers): often more accurate at the same MACs, "
                        "slower in onnxruntime on x86")
    p.add_argument("--save-policy", default=None, help="save the search policy (reinforce agent) for transfer")
    p.add_argument("--load-policy", default=None, help="warm-start the search policy from a saved one")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_input_size(p)
    _add_preprocess(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="onnxcompress", description="Compression compiler for trained CNN classifiers delivered as ONNX.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("compress", help="search, rewrite and fine-tune a smaller student")
    _add_compress_options(p)
    _add_common(p)

    p = sub.add_parser("inspect", help="layers, channel groups, removable units, costs")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    _add_input_size(p)
    _add_common(p)

    p = sub.add_parser("apply", help="replay a plan on a model")
    p.add_argument("model")
    p.add_argument("plan")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--data", default=None, help="calibration images for data-driven passes")
    p.add_argument("--seed", type=int, default=0)
    _add_input_size(p)
    _add_preprocess(p)
    _add_common(p)

    p = sub.add_parser("finetune", help="knowledge-distillation fine-tuning of a student")
    p.add_argument("model", help="student ONNX")
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--val-data", default=None)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--kd", default="hinton,attention", help="comma-separated: hinton, attention, hint, ce")
    p.add_argument("--classes", default=None, help="the teacher classes the student's outputs are, in order")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    _add_input_size(p)
    _add_preprocess(p)
    _add_common(p)

    p = sub.add_parser("eval", help="accuracy, agreement with a teacher, cost and latency")
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--teacher", default=None)
    p.add_argument("--classes", default=None, help="for a class-subset model: the teacher classes it keeps")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--json", action="store_true")
    _add_input_size(p)
    _add_preprocess(p)
    _add_common(p)

    p = sub.add_parser("demo", help="the whole job on the bundled teacher and data")
    p.add_argument("-o", "--output-dir", default="onnxcompress-demo")
    p.add_argument("--quick", action="store_true", help="a shorter search and fine-tune (for tests)")
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)
    return parser


def _normalise_argv(argv: list[str]) -> list[str]:
    """`onnxcompress MODEL.onnx ...` means `onnxcompress compress MODEL.onnx ...`."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in COMMANDS and argv and argv[0] not in ("-h", "--help"):
        return ["compress", *argv]
    return argv


def check_output_path(output: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> Path:
    """-o must not be an input and its folder must exist (checked before any work starts)."""
    out = Path(output)
    for inp in inputs:
        if inp is not None and Path(inp).exists() and out.exists() and out.resolve() == Path(inp).resolve():
            raise UsageError(f"-o {out} is the input file; refusing to overwrite the input model")
        if inp is not None and out.resolve() == Path(inp).resolve():
            raise UsageError(f"-o {out} is the input file; refusing to overwrite the input model")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"output folder '{folder}' does not exist; create it first")
    if out.is_dir():
        raise UsageError(f"-o {out} is a directory; give a file name like {out / 'student.onnx'}")
    return out


def load_input_model(path, args, data=None):
    """Reads a model given on the command line. A model whose input leaves height/width symbolic
    is pinned to --input-size, else to the size of the `.npz` images in `data` (with a note)."""
    from onnxcompress.compiler.data import dynamic_spatial, image_size_of, input_layout, pin_input_size
    from onnxcompress.compiler.onnx_io import load_model
    from onnxcompress.errors import ModelError

    model = load_model(path)
    size = getattr(args, "input_size", None)
    if not dynamic_spatial(model):
        model = model if size is None else pin_input_size(model, *size)  # checks that it agrees
        return _classifier(model, args)
    if size is None and data is not None:
        size = image_size_of(data, input_layout(model))
        if size is not None:
            print(f"note: {Path(path).name} has a dynamic input height/width; using {size[0]}x{size[1]}, the size of the "
                  f"--data images (--input-size HxW to choose)", file=sys.stderr)
    if size is None:
        raise ModelError(f"{Path(path).name} has a dynamic input height/width; give --input-size HxW, the size it will run at")
    return _classifier(pin_input_size(model, *size), args)


def _classifier(model, args):
    """A single-score (sigmoid) binary classifier is seen as two classes (restored on output:
    compiler/binary_head.py); then validated before any data is read (its errors would otherwise
    be about the wrong thing)."""
    from onnxcompress.compiler import binary_head
    from onnxcompress.compiler.onnx_io import validate_classifier

    if binary_head.is_single_score(model):
        if getattr(args, "classes", None):
            raise UsageError("--classes does not apply to a binary classifier with a single score (it has no classes to keep)")
        model = binary_head.two_class_view(model)
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
    from onnxcompress.compiler.config import parse_float_list

    return preprocess_for(
        model,
        scale=args.scale,
        mean=None if args.mean is None else parse_float_list(args.mean, "--mean"),
        std=None if args.std is None else parse_float_list(args.std, "--std"),
        bgr=args.bgr,
    )


def cmd_inspect(args) -> int:
    from onnxcompress.compiler.inspection import format_inspection, inspect_model

    original = load_input_model(args.model, args)
    doc, analysis = inspect_model(Path(args.model).name, original)
    print(json.dumps(doc, indent=1) if args.json else format_inspection(doc, analysis))
    return 0


def cmd_apply(args) -> int:
    from onnxcompress import api
    from onnxcompress.compiler.binary_head import restore_single_score
    from onnxcompress.compiler.onnx_io import save_model_atomic
    from onnxcompress.passes import Plan

    out = check_output_path(args.output, [args.model, args.plan])
    plan = Plan.load(args.plan)
    original = load_input_model(args.model, args, args.data)
    preprocess = preprocess_from_args(args, original)
    student = api.apply(original, plan, data=args.data, preprocess=preprocess, seed=args.seed)
    with interrupts.committing():
        save_model_atomic(restore_single_score(student), out)
    from onnxcompress.compiler.cost import model_cost

    before, after = model_cost(api.load(original)), model_cost(student)
    print(f"wrote {out}: MACs {after.macs:,} ({after.macs / max(before.macs, 1):.3f}x), params {after.params:,} ({after.params / max(before.params, 1):.3f}x), {after.size_bytes:,} bytes")
    return 0


def cmd_eval(args) -> int:
    from onnxcompress import api
    from onnxcompress.compiler.config import parse_int_list

    model = load_input_model(args.model, args, args.data)
    teacher = load_input_model(args.teacher, args, args.data) if args.teacher else None
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


def cmd_finetune(args) -> int:
    from onnxcompress.compiler.pipeline import finetune_command

    return finetune_command(args)


def cmd_compress(args) -> int:
    from onnxcompress.compiler.config import Target, parse_int_list

    # validate the cheap things before importing the heavy pipeline (torch): bad options fail fast
    for t in args.target:
        Target.parse(t)
    if args.classes:
        parse_int_list(args.classes, "--classes")
    from onnxcompress.compiler.pipeline import compress_command

    return compress_command(args)


def cmd_demo(args) -> int:
    from onnxcompress.compiler.pipeline import demo_command

    return demo_command(args)


HANDLERS = {
    "compress": cmd_compress,
    "inspect": cmd_inspect,
    "apply": cmd_apply,
    "finetune": cmd_finetune,
    "eval": cmd_eval,
    "demo": cmd_demo,
}


def entry() -> None:
    """The console script and `python -m onnxcompress`: run the command and end the process
    (signals stay handled until the very end: see onnxcompress/interrupts.py)."""
    interrupts.install()
    interrupts.exit_process(run())


def main(argv: Sequence[str] | None = None) -> int:
    """The command line in-process (scripts, tests): like `entry`, but returns the exit status
    and gives the caller its signal handlers back."""
    previous = interrupts.handlers()
    try:
        return run(argv)
    finally:
        interrupts.install()  # resets the committed state
        interrupts.restore(previous)


def run(argv: Sequence[str] | None = None) -> int:
    code = _run(argv)
    if interrupts.late():
        print(interrupts.late_note(), file=sys.stderr)
    return code


def _run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Ctrl-C and SIGTERM (a scheduler stopping the job): clean stop, no partial output
    interrupts.install()
    debug = "--debug" in argv
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(_normalise_argv(argv))
        if args.command is None:
            parser.print_help()
            return 0
        return HANDLERS[args.command](args)
    except CompressError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return _interrupted(args)
    except BrokenPipeError:  # `onnxcompress inspect m.onnx | head`: the reader left; stop quietly like other tools
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except MemoryError:
        if debug:
            raise
        print("error: out of memory; use smaller data (fewer images) or a smaller model", file=sys.stderr)
        return 8
    except Exception as exc:  # an internal bug: still one line, with how to see more
        if interrupts.received():  # e.g. "ImportError: initialization failed" from a signal during an import
            return _interrupted(args)
        if debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"internal error: {type(exc).__name__}: {msg} (rerun with --debug for a traceback and report it)", file=sys.stderr)
        return EXIT_INTERNAL


def _silence_stdout() -> None:
    """Points stdout at /dev/null so that the flush at exit does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _interrupted(args) -> int:
    interrupts.ignore()  # a second signal while shutting down must not turn the clean exit into a kill
    resumable = args is not None and "resume" in vars(args)  # compress and finetune keep a checkpoint
    print("interrupted: nothing was written" + (" (resume with --resume)" if resumable else ""), file=sys.stderr)
    return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    entry()
