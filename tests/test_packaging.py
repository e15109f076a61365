"""The distribution: a built wheel installs the sub-packages mapped from the top-level folders
(compiler/, passes/, search/, models/) under onnxcompress.*, with the bundled demo data."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_and_imports_subpackages(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("onnxcompress-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("onnxcompress/cli.py", "onnxcompress/compiler/ir.py", "onnxcompress/passes/prune_channels.py",
                   "onnxcompress/search/__init__.py", "onnxcompress/models/__init__.py"):
        assert module in names, module
    assert not any(n.startswith(("compiler/", "passes/", "search/", "tests/")) for n in names)
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    code = "import onnxcompress.compiler.ir, onnxcompress.passes, onnxcompress.search, onnxcompress.models, sys; print(onnxcompress.compiler.ir.__file__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(target), "PATH": ""}, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(target))
