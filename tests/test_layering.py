"""Layers point one way (DESIGN.md): compiler < passes < search < onnxcompress (API, CLI,
pipeline, config, report); models (reference teachers) sits beside passes and may import the
compiler only. Every import statement counts: module level, inside functions, under
`if TYPE_CHECKING`, `import a.b`, `from a import b` and relative imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# source folder -> the package it installs as (pyproject.toml's package-dir)
SOURCES = {"compiler": "onnxcompress.compiler", "passes": "onnxcompress.passes", "search": "onnxcompress.search",
           "models": "onnxcompress.models", "onnxcompress": "onnxcompress"}
SUBPACKAGES = ("compiler", "passes", "search", "models")
# layer -> the layers its modules may import
ALLOWED = {
    "compiler": {"compiler"},
    "passes": {"compiler", "passes"},
    "models": {"compiler", "models"},
    "search": {"compiler", "passes", "search"},
    "top": {"compiler", "passes", "search", "models", "top"},
}


def layer_of(module: str) -> str | None:
    """The layer of an absolute module name of this project (None: a third-party module)."""
    parts = module.split(".")
    if parts[0] != "onnxcompress":
        return None
    if len(parts) > 1 and parts[1] in SUBPACKAGES:
        return parts[1]
    return "top"


def module_name(path: Path) -> tuple[str, str]:
    """(module name, package the module's relative imports resolve against) of a source file."""
    rel = path.relative_to(ROOT)
    parts = [SOURCES[rel.parts[0]], *rel.parts[1:-1]]
    package = ".".join(parts)
    if path.name == "__init__.py":
        return package, package
    return f"{package}.{path.stem}", package


def imported_modules(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in `tree`. `from onnxcompress import Y` yields
    onnxcompress.Y (`from onnxcompress import search` imports the search layer)."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "onnxcompress":
                out.extend((node.lineno, f"onnxcompress.{a.name}") for a in node.names)
            else:
                out.append((node.lineno, module))
    return out


def violations(source: str, path: str, module: str, package: str) -> list[str]:
    layer = layer_of(module)
    found = []
    for line, imported in imported_modules(ast.parse(source, path), package):
        target = layer_of(imported)
        if target is not None and target not in ALLOWED[layer]:
            found.append(f"{path}:{line}: {layer} imports {imported} ({target})")
    return found


def source_files() -> list[Path]:
    return sorted(p for folder in SOURCES for p in (ROOT / folder).rglob("*.py"))


def test_every_import_points_down():
    files = source_files()
    assert len(files) > 50 and any(p.parts[-2:] == ("quantize", "qdq.py") for p in files)
    found = []
    for path in files:
        module, package = module_name(path)
        found += violations(path.read_text(), str(path.relative_to(ROOT)), module, package)
    assert not found, "imports of a higher layer:\n" + "\n".join(found)


def test_the_check_sees_every_kind_of_import():
    source = """
from typing import TYPE_CHECKING
import numpy
from onnxcompress.compiler import ir
if TYPE_CHECKING:
    from onnxcompress.search.env import CompressionEnv
def f():
    import onnxcompress.passes.manager
    from onnxcompress import search, errors
    from ... import pipeline
    from ...models import zoo
    from .. import ops
"""
    found = violations(source, "compiler/x/y.py", "onnxcompress.compiler.x.y", "onnxcompress.compiler.x")
    assert [f.split(":")[1] for f in found] == ["6", "8", "9", "9", "10", "11"], found
    assert any("onnxcompress.pipeline (top)" in f for f in found)
    assert violations("from onnxcompress.compiler import ops\n", "models/m.py", "onnxcompress.models.m", "onnxcompress.models") == []
    assert violations("from onnxcompress.passes import Plan\n", "models/m.py", "onnxcompress.models.m", "onnxcompress.models")
    assert violations("from onnxcompress.models import zoo\n", "search/s.py", "onnxcompress.search.s", "onnxcompress.search")
