"""The `onnxcompress` command line (DESIGN.md's contract). Thin: parses and validates options and
runs the command of onnxcompress/commands.py. Errors are one line on stderr with a distinct exit
status; a traceback only with --debug; Ctrl-C/SIGTERM end cleanly (onnxcompress/interrupts.py)."""

from __future__ import annotations

import argparse
import os
import sys
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


def _add_device(p: argparse.ArgumentParser, what: str) -> None:
    from onnxcompress.compiler.device import DEVICES, PRECISIONS  # (no torch: the choices only)

    p.add_argument("--device", choices=DEVICES, default="auto",
                   help=f"{what} (default auto: CUDA when present, else the CPU; cuda: an error without it)")
    p.add_argument("--train-precision", choices=PRECISIONS, default="auto",
                   help="arithmetic of fine-tuning (default auto: bfloat16 autocast where the CPU or GPU has native bf16, "
                        "e.g. AVX512-BF16/AMX, float32 elsewhere; weights and the written model stay float32)")


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
    p.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="finish within this wall-clock time (e.g. 60m, 1h30m, 90s): the search, structure probes and "
                        "fine-tuning are planned from costs measured on this machine; the report says how the time was spent")
    _add_device(p, "fine-tuning on torch's CUDA device, candidate evaluation on onnxruntime's CUDAExecutionProvider")
    _add_input_size(p)
    _add_preprocess(p)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxcompress")
    except PackageNotFoundError:  # run from a source tree that was not installed
        from onnxcompress import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="onnxcompress", description="Compression compiler for trained CNN classifiers delivered as ONNX.")
    parser.add_argument("--version", action="version", version=f"onnxcompress {_version()}")
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
    p.add_argument("plan", help="a plan (.json), or a compress --report file (its student's plan)")
    p.add_argument("--student", type=int, default=None, help="with a report of several students: which one (from 1)")
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
    _add_device(p, "fine-tuning on torch's CUDA device")
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
    code: int | None = None
    try:
        code = _run(argv)
        interrupts.finish()  # the command is over: from here to the exit, signals are only noted
    except KeyboardInterrupt:  # a signal in the instants between the command's end and finish()
        return code if code is not None else _interrupted(None)
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
        from onnxcompress.commands import HANDLERS

        args = parser.parse_args(_normalise_argv(argv))
        if args.command is None:
            parser.print_help()
            return 0
        return HANDLERS[args.command](args)
    except SystemExit as exc:  # argparse's --help and --version
        return exc.code if isinstance(exc.code, int) else 0
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
