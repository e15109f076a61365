"""`inspect --json` of every pinned model equals its golden document (tests/data/inspect_golden,
written by tests/data/make_inspect_golden.py): a change of the IR that changes what users see (layers,
groups and their ids, removable units, costs, frozen reasons) fails here. Realdata models skip when
../shared is absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnxcompress.compiler.inspection import inspect_model
from onnxcompress.compiler.onnx_io import load_model
from tests.data.golden_models import DATA, golden_models, local_model_names

GOLDEN = DATA / "inspect_golden"
NAMES = sorted(p.stem for p in GOLDEN.glob("*.json"))
LOCAL = local_model_names()


def _path(name: str) -> Path:
    for n, p in golden_models():
        if n == name:
            return p
    pytest.skip(f"model {name} not present (../shared/realdata is absent in a fresh clone)")


@pytest.mark.parametrize("name", [n if n in LOCAL else pytest.param(n, marks=pytest.mark.realdata) for n in NAMES])
def test_inspect_json_is_unchanged(name: str) -> None:
    doc, _ = inspect_model(name, load_model(_path(name)))
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    got = json.loads(json.dumps(doc, sort_keys=True))
    for key in expected:
        assert got[key] == expected[key], f"{name}: '{key}' differs from the golden inspect document"
    assert set(got) == set(expected)


def test_every_model_is_pinned() -> None:
    assert {n for n, _ in golden_models()} <= set(NAMES)
