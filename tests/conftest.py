"""Shared fixtures. Tests that need ../shared/realdata skip cleanly when it is absent (a user's
fresh clone has no ../shared)."""

from __future__ import annotations

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


def realdata_path(*parts: str) -> Path:
    """Path under ../shared/realdata, or skip the test when it is not there."""
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/realdata is absent in a fresh clone)")
    return path


@pytest.fixture
def realdata():
    return realdata_path
