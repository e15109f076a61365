"""Writes tests/data/inspect_golden/*.json: the `inspect --json` documents of every model in
../shared/realdata, the bundled demo teacher, the fixtures of tests/data and the reference
architectures of models/ (exported with seed-0 random weights). tests/compiler/test_inspect_golden.py
compares today's analysis with them, so that a refactoring of the IR that changes what users see
fails. Re-run this script only when a change of the analysis is intended, and say why in the commit.

    .venv/bin/python -m tests.data.make_inspect_golden
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.data.golden_models import golden_models

OUT = Path(__file__).resolve().parent / "inspect_golden"


def main() -> int:
    from onnxcompress.compiler.inspection import inspect_model
    from onnxcompress.compiler.onnx_io import load_model

    OUT.mkdir(exist_ok=True)
    for name, path in golden_models(missing_ok=True):
        doc, _ = inspect_model(name, load_model(path))
        (OUT / f"{name}.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        print(name, doc["macs"], len(doc["groups"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
