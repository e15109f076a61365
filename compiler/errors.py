"""User-facing errors. Each carries the exit status the CLI returns and a one-line message.

Raised at the edge (CLI / API validation) and by the compiler when the input is at fault; the CLI
prints `error: <message>` on one line and exits with `exit_code`, no traceback unless --debug.
"""

from __future__ import annotations


class CompressError(Exception):
    """Base class: something the user can fix. The message is one line saying what and what to do."""

    exit_code = 1


class UsageError(CompressError):
    """Bad command-line arguments or options (unparsable --target, -o equal to input, ...)."""

    exit_code = 2


class ModelError(CompressError):
    """The model file is missing, not ONNX, rejected by onnx.checker, or not a CNN we can handle."""

    exit_code = 3


class DataError(CompressError):
    """The data does not fit the model (shape, channels, classes), has NaN/Inf, or is missing."""

    exit_code = 4


class PlanError(CompressError):
    """A plan is malformed or references unknown passes, groups, blocks, nodes or classes."""

    exit_code = 5


class UnsupportedOpError(CompressError):
    """An op that a component (e.g. the PyTorch bridge) cannot handle; the message names it."""

    exit_code = 6


class VerificationError(CompressError):
    """A rewritten graph failed verification (checker / onnxruntime / output shape)."""

    exit_code = 7


class ResourceError(CompressError):
    """The job would exceed memory or another limit; refused before it starts."""

    exit_code = 8
