"""Peak memory of inspect and apply (issue 16, bench/results/memory.md): the analysis reads the
shapes of the weights, never their values, and neither command holds more than about one extra
copy of the weights in Python-visible memory (tracemalloc sees numpy arrays and bytes objects,
which is where the copies that were cut lived; protobuf's own arenas are not traced)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxcompress import api
from onnxcompress.compiler.inspection import inspect_model
from onnxcompress.compiler.onnx_io import canonicalize
from onnxcompress.compiler.tensors import VALUE_MAX_BYTES
from onnxcompress.passes import Plan

from tests.builders import resnet_like


def big_head_model(hidden: int = 192, side: int = 32, width: int = 64, seed: int = 0) -> onnx.ModelProto:
    """Conv(3->width) -> Relu -> Flatten -> Gemm(width*side*side -> hidden): a ~50 MB model whose
    weight is nearly all in one fully connected layer (as VGG's first one)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((width, 3, 3, 3), dtype=np.float32)
    b1 = rng.standard_normal(width, dtype=np.float32)
    w2 = rng.standard_normal((hidden, width * side * side), dtype=np.float32) * 0.01
    b2 = rng.standard_normal(hidden, dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "big_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, side, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", hidden])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def record_weight_loads(monkeypatch) -> list[str]:  # noqa: ANN001
    """Records every conversion of a large initializer to numpy (gs's lazy loading, or onnx's
    to_array called directly)."""
    loaded: list[str] = []
    real_to_array = numpy_helper.to_array

    def to_array(tensor, *a, **k):  # noqa: ANN001, ANN002, ANN003
        if int(np.prod(tensor.dims, dtype=np.int64)) * 4 > VALUE_MAX_BYTES:
            loaded.append(tensor.name)
        return real_to_array(tensor, *a, **k)

    real_load = LazyValues.load

    def load(self):  # noqa: ANN001, ANN202
        if self.nbytes > VALUE_MAX_BYTES:
            loaded.append(self.tensor.name)
        return real_load(self)

    monkeypatch.setattr(numpy_helper, "to_array", to_array)
    monkeypatch.setattr(LazyValues, "load", load)
    return loaded


@pytest.mark.parametrize("build", [big_head_model, lambda: resnet_like(width=48)], ids=["big_head", "resnet"])
def test_the_analysis_reads_no_weight_values(build, monkeypatch) -> None:
    model = build()
    expected, _ = inspect_model("m", model, canonicalize(model))  # with values loaded freely: the reference
    canonical = canonicalize(model)  # (validation reads every weight, one at a time)
    loaded = record_weight_loads(monkeypatch)
    doc, analysis = inspect_model("m", model, canonical)
    assert loaded == [], "the analysis converted weights to numpy"
    assert doc == expected
    assert analysis.layers and analysis.groups


def _traced_peak(fn) -> tuple[int, object]:  # noqa: ANN001
    tracemalloc.start()
    try:
        result = fn()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_inspect_and_apply_hold_no_second_copy_of_the_weights(tmp_path: Path) -> None:
    path = tmp_path / "big.onnx"
    onnx.save(big_head_model(), path)
    size = path.stat().st_size
    assert size > 45e6
    # reading the file holds its bytes once (onnx.load), validation one weight's bytes at a time:
    # about one file size (1.25x measured; 2.0x before issue 16, when the analysis loaded every
    # weight into numpy)
    peak, doc = _traced_peak(lambda: api.inspect(path))
    assert doc["params"] > 12_000_000
    assert peak < 1.5 * size, f"inspect traced {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB model"
    # apply: one weight's bytes and its cut at a time (1.5x measured; 7x before: every weight
    # loaded into numpy and kept, and float64 copies of whole weights to score the channels)
    plan = Plan.from_json({"passes": [{"pass": "prune_channels", "ratio": 0.5}]})
    peak, student = _traced_peak(lambda: api.apply(path, plan))
    assert len(student.graph.initializer) == 4
    assert peak < 2.0 * size, f"apply traced {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB model"


def test_const_meta_answers_like_the_values() -> None:
    from onnxcompress.compiler.onnx_io import import_graph
    from onnxcompress.compiler.ops import const, rank_of, shape_of
    from onnxcompress.compiler.tensors import ConstMeta, read_values

    graph = import_graph(big_head_model(hidden=8, side=8))  # w2: 8 x 4096 floats, 128 KiB
    w = next(t for t in graph.tensors().values() if t.name == "w2")
    meta = const(w)
    assert isinstance(meta, ConstMeta) and isinstance(const(next(t for t in graph.tensors().values() if t.name == "b2")), np.ndarray)
    assert (meta.shape, meta.ndim, meta.size, meta.dtype) == ((8, 4096), 2, 8 * 4096, np.dtype(np.float32))
    assert shape_of(w) == (8, 4096) and rank_of(w) == 2
    peeked = read_values(w)
    assert isinstance(w._values, LazyValues)  # reading did not store the values in the graph
    assert np.array_equal(np.asarray(meta), peeked) and np.array_equal(meta.reshape(-1), peeked.reshape(-1))
    assert np.array_equal(w.values, peeked)  # anything else loads them, as gs does
