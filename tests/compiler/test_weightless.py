"""The copies that big models avoid (bench/results/memory.md) give the same answers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import shape_inference

from onnxcompress.compiler.cost import serialized_size
from onnxcompress.compiler.onnx_io import canonicalize, check
from onnxcompress.compiler.shapes import weightless
from onnxcompress.errors import ModelError

from tests.builders import fire_like, resnet_like


def test_serialized_size_is_bytesize() -> None:
    for model in (resnet_like(), fire_like(), canonicalize(resnet_like(bn=True))):
        assert serialized_size(model) == model.ByteSize()
    m = resnet_like()
    m.doc_string, m.graph.doc_string = "d", "g"
    m.graph.initializer[0].doc_string = "w"
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.arange(300, dtype=np.float32).reshape(3, 100), "extra"))
    m.graph.initializer[-1].ClearField("raw_data")
    m.graph.initializer[-1].float_data.extend(range(300))  # typed rather than raw data
    assert serialized_size(m) == m.ByteSize()


def test_weightless_copy_infers_the_same_shapes_and_fails_the_same_checks() -> None:
    model = resnet_like(width=32)  # 3x3x32x32 weights: 36 KB each, above the size kept
    light = weightless(model)
    assert light.ByteSize() < model.ByteSize() / 2 and len(model.graph.initializer) > len(light.graph.initializer)
    full = {v.name: v for v in shape_inference.infer_shapes(model).graph.value_info}
    assert {v.name: v for v in shape_inference.infer_shapes(light).graph.value_info} == full
    check(model)
    bad = resnet_like(width=32)
    next(n for n in bad.graph.node if n.op_type == "Conv").input[1] = "missing"  # a weight nobody defines
    with pytest.raises(ModelError, match="checker"):
        check(bad)
