"""`python -m onnxcompress`."""

from onnxcompress import interrupts

# Ctrl-C / SIGTERM stop cleanly from the very first moment, even while modules still import
interrupts.install()
try:
    from onnxcompress.cli import entry
except KeyboardInterrupt:
    print("interrupted: nothing was written", flush=True, file=__import__("sys").stderr)
    interrupts.exit_process(interrupts.EXIT_INTERRUPTED)
else:
    entry()
