"""No library module over 800 lines: a module that grows past that holds several concerns and is
split into a sub-package (compiler/bridge/, passes/quantize/)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("compiler", "passes", "search", "models", "onnxcompress")
MAX_LINES = 800


def test_no_library_module_over_800_lines():
    files = [p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 50
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"
