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

"""

from __future__ import annotations

import atexit
import os
import signal
import sys

EXIT_INTERRUPTED = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received = False


def raise_interrupt(signum, frame):  # noqa: ARG001
    """The handler: record the interrupt and raise KeyboardInterrupt."""
    global _received
    _received = True
    raise KeyboardInterrupt


def install() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt (and are recorded). No-op off the main thread."""
    global _received
    _received = False
    try:
        for sig in SIGNALS:
            signal.signal(sig, raise_interrupt)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass


def received() -> bool:
    """Whether SIGINT/SIGTERM arrived since `install()`."""
    return _received


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
