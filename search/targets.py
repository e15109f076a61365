"""Search targets: resource budgets as fractions of the teacher (DESIGN.md's `--target`).

`Target(macs=0.5)` means "at most half the teacher's MACs". The class lives in
onnxcompress.compiler.config so that the CLI, the pipeline and the search share one definition.
"""

from onnxcompress.compiler.config import DIMENSIONS, Target

__all__ = ["DIMENSIONS", "Target"]
