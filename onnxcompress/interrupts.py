"""How the command line stops on Ctrl-C / SIGTERM: cleanly, with exit status 130, never a
traceback, a kill by signal, or a partial file.

Three CPython details make this more than `except KeyboardInterrupt`:

1. SIGTERM kills the process by default. `install()` makes it raise KeyboardInterrupt like Ctrl-C,
   and records that an interrupt happened (`received()`), because a KeyboardInterrupt raised
   while a C extension initialises (torch and onnxruntime are pybind11 modules) can come out as
   an unrelated `ImportError: initialization failed`.
2. If a KeyboardInterrupt goes through Python code run by `PyRun_String` (pybind11's `py::exec`,
   which those modules call while importing), CPython sets its "unhandled KeyboardInterrupt" flag,
   which nothing resets: even after we caught the exception, the interpreter would end by killing
   itself with SIGINT (exit status -2) instead of exiting 130. `exit_process()` therefore runs
   the atexit handlers itself and leaves with `os._exit`.
3. At interpreter shutdown CPython restores the default handlers, so a signal arriving in the last
   milliseconds of a finished job would kill it (-15). Once the job is over, `exit_process()`
   ignores further signals: there is nothing left to interrupt.

A command writes its outputs inside `committing()`: from the first byte written to the end of the
process a signal is only noted, never raised, so a job is either not written at all (exit 130,
"interrupted: nothing was written") or written completely (exit 0, with a note that the interrupt
came too late to stop it). Without this, a signal between the rename of the output into place and
the end of the command reported "nothing was written" beside a complete output file.

"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_INTERRUPTED = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received = False
_committed = False  # outputs are being (or have been) written: signals are noted, not raised
_late: list[int] = []  # signals that arrived after the commit began


def raise_interrupt(signum, frame):  # noqa: ARG001
    """The handler: record the interrupt and raise KeyboardInterrupt (only note it once the
    command writes its outputs)."""
    global _received
    if _committed:
        _late.append(signum)
        return
    _received = True
    raise KeyboardInterrupt


def install() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt (and are recorded). No-op off the main thread."""
    global _received, _committed
    _received = False
    _committed = False
    _late.clear()
    try:
        for sig in SIGNALS:
            signal.signal(sig, raise_interrupt)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass


def received() -> bool:
    """Whether SIGINT/SIGTERM arrived since `install()`."""
    return _received


def handlers() -> dict[int, object]:
    """The current SIGINT/SIGTERM handlers (to restore them with `restore`)."""
    return {sig: signal.getsignal(sig) for sig in SIGNALS}


def restore(previous: dict[int, object]) -> None:
    """Put back handlers saved by `handlers()` (in-process callers of the CLI, e.g. tests)."""
    try:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
    except ValueError:
        pass


@contextmanager
def committing() -> Iterator[None]:
    """Writing the outputs of a finished job. Ctrl-C / SIGTERM from here to the end of the command
    are noted, not raised (see the module doc); `late()` says whether one came. If the writing
    itself fails, signals raise again."""
    global _committed
    previous = handlers()
    try:
        for sig in SIGNALS:  # API callers may not have installed the handler
            signal.signal(sig, raise_interrupt)
    except ValueError:  # not the main thread: signals cannot reach this code anyway
        previous = {}
    _committed = True
    try:
        yield
    except BaseException:
        _committed = False
        restore(previous)
        raise


def finish() -> None:
    """The command is over (outputs written or none to write): signals from now on are noted,
    not raised, as inside `committing()`."""
    global _committed
    _committed = True


def late() -> bool:
    """Whether a signal arrived after the outputs began to be written."""
    return bool(_late)


def late_note() -> str:
    return "interrupt received as the job finished: nothing was cut short, all outputs are complete"


def ignore() -> None:
    """Ignore SIGINT/SIGTERM from now on (shutting down: a second signal must not kill the exit)."""
    try:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
    except ValueError:
        pass


def exit_process(code: int) -> None:
    """End the `onnxcompress` process with `code`, immune to late signals (see the module doc)."""
    ignore()
    if code != EXIT_INTERRUPTED:
        sys.exit(code)
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
