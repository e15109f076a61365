import signal
import sys


def _interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


# SIGTERM behaves like Ctrl-C from the very first moment, even while modules are still importing
signal.signal(signal.SIGTERM, _interrupt)
try:
    from onnxcompress.cli import main
except KeyboardInterrupt:
    print("interrupted: nothing was written", file=sys.stderr)
    sys.exit(130)

try:
    code = main()
except KeyboardInterrupt:  # a signal between main()'s own handlers and here
    code = 130
sys.exit(code)
