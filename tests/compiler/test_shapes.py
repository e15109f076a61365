"""Shapes static inference cannot resolve (ShuffleNetV2's channel shuffle) are completed from
onnxruntime (compiler/shapes.py), so `inspect` counts the MACs a run really does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import shape_inference

from onnxcompress import api
from onnxcompress.cli import main
from onnxcompress.compiler import shapes
from onnxcompress.compiler.cost import model_cost
from onnxcompress.compiler.runtime import make_session

from tests.torch_models import ShuffleNet, export


@pytest.fixture(scope="module")
def shufflenet(tmp_path_factory) -> Path:
    """Exported with a dynamic batch, so the shuffle's reshape target is computed at run time."""
    return export(ShuffleNet(), tmp_path_factory.mktemp("shapes") / "shufflenet.onnx", (3, 16, 16))


def runtime_macs(model: onnx.ModelProto, sample_shape: tuple[int, ...]) -> int:
    """MACs counted independently of the cost model: onnxruntime runs the model with every
    intermediate tensor as an output, and Conv = Cout*Cin/groups*kh*kw*Hout*Wout, Gemm = in*out,
    MatMul = weight elements * the leading non-batch dims of its input, at batch 1."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [o for n in probe.graph.node for o in n.output if o]
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in have)
    session = make_session(probe, optimize=False)
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: np.zeros((1, *sample_shape), np.float32)})))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    shape_of = lambda name: values[name].shape if name in values else inits[name].shape  # noqa: E731
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = shape_of(node.input[1])
            out = shape_of(node.output[0])
            total += int(np.prod(w)) * int(np.prod(out[2:]))
        elif node.op_type == "Gemm":
            total += int(np.prod(shape_of(node.input[1])))
        elif node.op_type == "MatMul":
            a = shape_of(node.input[0])
            total += int(np.prod(shape_of(node.input[1]))) * int(np.prod(a[1:-1]))
    return total


def _unknown_conv_outputs(model: onnx.ModelProto) -> list[str]:
    known = {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
             for vi in model.graph.value_info}
    return [n.output[0] for n in model.graph.node if n.op_type == "Conv" and (not known.get(n.output[0]) or None in known[n.output[0]][2:])]


def test_static_inference_alone_leaves_the_shuffled_convs_unknown(shufflenet: Path, monkeypatch) -> None:
    # the premise: onnx's shape inference loses the shapes after the shuffle
    static = shape_inference.infer_shapes(onnx.load(str(shufflenet)), data_prop=True)
    assert len(_unknown_conv_outputs(static)) >= 4
    # and without compiler/shapes.py the costs were wrong (those convs counted 0 MACs)
    monkeypatch.setattr(shapes, "resolve_shapes", lambda m: m)
    assert api.inspect(shufflenet)["macs"] < runtime_macs(onnx.load(str(shufflenet)), (3, 16, 16))


def test_inspect_macs_equal_a_runtime_shape_count(shufflenet: Path, capsys) -> None:
    assert main(["inspect", str(shufflenet), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    expected = runtime_macs(onnx.load(str(shufflenet)), (3, 16, 16))
    assert doc["macs"] == expected
    assert all(layer["macs"] > 0 for layer in doc["layers"])
    canonical = api.load(shufflenet)
    assert _unknown_conv_outputs(canonical) == [] and shapes.unresolved(canonical) == []
    # the batch stays symbolic in the resolved shapes
    infos = {vi.name: vi for vi in canonical.graph.value_info}
    conv_out = next(n.output[0] for n in canonical.graph.node if n.op_type == "Conv")
    assert infos[conv_out].type.tensor_type.shape.dim[0].dim_param == "N"


def test_one_onnxruntime_run_resolves_them_when_symbolic_inference_cannot(shufflenet: Path, monkeypatch) -> None:
    monkeypatch.setattr(shapes, "_symbolic", lambda model, names: {})
    canonical = api.load(shufflenet)
    assert shapes.unresolved(canonical) == []
    assert model_cost(canonical).macs == runtime_macs(onnx.load(str(shufflenet)), (3, 16, 16))
    dims = {vi.name: vi.type.tensor_type.shape.dim for vi in canonical.graph.value_info}
    assert all(d[0].dim_param == "N" for name, d in dims.items() if len(d) == 4)  # measured at batch 1 and 2
    # the resolved model still runs at any batch
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    assert make_session(canonical).run(None, {"x": x})[0].shape == (3, 10)


def test_a_pruned_shufflenet_costs_what_it_runs(shufflenet: Path) -> None:
    # passes re-export the graph: the shapes of the rewritten model are resolved too
    pruned = api.apply(shufflenet, {"passes": [{"pass": "prune_channels", "ratio": 0.5}]})
    got = model_cost(api.load(pruned)).macs
    assert got == runtime_macs(pruned, (3, 16, 16))
    assert got < runtime_macs(onnx.load(str(shufflenet)), (3, 16, 16))
