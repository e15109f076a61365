"""Shared fixtures and markers. Tests that need ../shared/realdata skip cleanly when it is absent
(a user's fresh clone has no ../shared).

Markers (`make test-fast` deselects both; `make test` runs everything):
- realdata: the test reads ../shared/realdata. Marked automatically when it uses the `realdata`
  fixture or calls `realdata_path` itself; `realdata_path` fails a test that is not marked, so
  the marker stays true as tests change.
- slow: one of the longest tests (several seconds to minutes: end-to-end compress runs, Ray,
  training); marked by hand.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("ONNXCOMPRESS_REALDATA", ROOT.parent / "shared" / "realdata"))

REAL_MODELS = [
    "mnist8_cntk_zoo.onnx",
    "cifar10_squeezenet_keras.onnx",
    "vww_person_mobilenetv2_a050_128_st.onnx",
    "cifar10_resnet8_mlperftiny_tf2onnx.onnx",
    "imagenet_squeezenet1.1_fp32_from_winml_fp16.onnx",
]


_running: list[pytest.Item] = []  # the test being run (realdata_path checks its marker)


def realdata_path(*parts: str) -> Path:
    """Path under ../shared/realdata, or skip the test when it is not there."""
    if _running and _running[-1].get_closest_marker("realdata") is None:
        pytest.fail(f"{_running[-1].nodeid} reads ../shared/realdata but is not marked realdata: add @pytest.mark.realdata")
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/realdata is absent in a fresh clone)")
    return path


@pytest.fixture
def realdata():
    return realdata_path


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("realdata") is not None:
            continue
        function = getattr(item, "function", None)
        try:
            source = inspect.getsource(function) if function is not None else ""
        except (OSError, TypeError):
            source = ""
        if "realdata" in getattr(item, "fixturenames", ()) or "realdata_path(" in source:
            item.add_marker(pytest.mark.realdata)


@pytest.fixture(autouse=True)
def _current_test(request):
    _running.append(request.node)
    yield
    _running.pop()
