"""Fuzzing import: mutated models (a node dropped, an initializer's shape corrupted, a tensor
renamed, a dtype changed, bytes flipped) either import or fail with a clean CompressError —
never another exception, a hang, or a written file. Found crashes are kept as regression cases."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.onnx_io import canonicalize, import_graph, load_model
from onnxcompress.errors import CompressError
from tests.builders import fire_like, mobilenet_like, resnet_like

BASES = [resnet_like(bn=True).SerializeToString(), fire_like().SerializeToString(), mobilenet_like().SerializeToString()]


def mutate(model: onnx.ModelProto, kind: str, pick: int) -> None:
    g = model.graph
    if kind == "drop_node" and g.node:
        del g.node[pick % len(g.node)]
    elif kind == "corrupt_shape" and g.initializer:
        init = g.initializer[pick % len(g.initializer)]
        if init.dims:
            init.dims[pick % len(init.dims)] += 1 + pick % 3
    elif kind == "rename_tensor" and g.node:
        node = g.node[pick % len(g.node)]
        if node.input:
            node.input[pick % len(node.input)] = f"renamed_{pick}"
    elif kind == "change_dtype" and g.initializer:
        init = g.initializer[pick % len(g.initializer)]
        init.data_type = [onnx.TensorProto.INT64, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.UINT8][pick % 4]
    elif kind == "change_input_dtype":
        g.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT32
    elif kind == "drop_output":
        del g.output[:]
    elif kind == "bad_attribute" and g.node:
        node = g.node[pick % len(g.node)]
        if node.attribute:
            node.attribute[0].ints[:] = [pick % 7, -3]


def import_cleanly(path) -> None:
    try:
        model = load_model(path)
        canonical = canonicalize(model)
        analyze(import_graph(canonical))
    except CompressError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg.strip()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    base=st.sampled_from(range(len(BASES))),
    kinds=st.lists(st.sampled_from(["drop_node", "corrupt_shape", "rename_tensor", "change_dtype", "change_input_dtype", "drop_output", "bad_attribute"]), min_size=1, max_size=3),
    pick=st.integers(0, 1000),
)
def test_mutated_models_import_or_fail_cleanly(tmp_path, base, kinds, pick):
    model = onnx.ModelProto.FromString(BASES[base])
    for k in kinds:
        mutate(model, k, pick)
    path = tmp_path / f"m{pick}.onnx"
    path.write_bytes(model.SerializeToString())
    before = sorted(p.name for p in tmp_path.iterdir())
    import_cleanly(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=2048), cut=st.integers(0, 4000))
def test_random_and_truncated_bytes(tmp_path, data, cut):
    for blob in (data, BASES[0][:cut]):
        path = tmp_path / "x.onnx"
        path.write_bytes(blob)
        import_cleanly(path)
