"""The distribution: a built wheel installs the sub-packages mapped from the top-level folders
(compiler/, passes/, search/, models/) under onnxcompress.*, with the bundled demo data."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_and_imports_subpackages(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("onnxcompress-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("onnxcompress/cli.py", "onnxcompress/pipeline.py", "onnxcompress/compiler/ir.py",
                   "onnxcompress/compiler/errors.py", "onnxcompress/compiler/bridge/handlers.py",
                   "onnxcompress/passes/prune_channels.py", "onnxcompress/passes/quantize/qdq.py",
                   "onnxcompress/search/__init__.py", "onnxcompress/search/structure.py", "onnxcompress/models/__init__.py"):
        assert module in names, module
    assert not any(n.startswith(("compiler/", "passes/", "search/", "tests/")) for n in names)
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    code = ("import onnxcompress.compiler.ir, onnxcompress.compiler.bridge, onnxcompress.passes, onnxcompress.passes.quantize.qdq, "
            "onnxcompress.search, onnxcompress.models, onnxcompress.pipeline, sys; print(onnxcompress.compiler.ir.__file__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(target), "PATH": ""}, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(target))


def test_every_source_package_is_declared():
    """Each folder with an __init__.py under the mapped source folders is in pyproject.toml's
    `packages` and `package-dir` (a sub-package missing there is absent from the wheel and,
    in an editable install, importable only by accident)."""
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = {name: folder for name, folder in tool["package-dir"].items()}
    found = {}
    for top, package in (("onnxcompress", "onnxcompress"), ("compiler", "onnxcompress.compiler"), ("passes", "onnxcompress.passes"),
                         ("search", "onnxcompress.search"), ("models", "onnxcompress.models")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found[".".join([package, *rel.parts])] = str(init.parent.relative_to(ROOT))
    assert found == declared
    assert sorted(tool["packages"]) == sorted(found)
