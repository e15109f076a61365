"""The IR: one test per op rule / group kind on small graphs built in code."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcompress.compiler.cost import SearchCost, model_cost
from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.onnx_io import canonicalize, import_graph
from tests.builders import GraphBuilder, conv_macs, fire_like, mobilenet_like, resnet_like
from tests.conftest import realdata_path


def _analysis(model):
    c = canonicalize(model)
    return c, analyze(import_graph(c))


def _group_of(analysis, node_prefix):
    for g in analysis.groups:
        if any(p.startswith(node_prefix) for p in g.producers):
            return g
    raise AssertionError(node_prefix)


def test_residual_add_couples_stage_into_one_group():
    c, a = _analysis(resnet_like(blocks=2))
    stage = [g for g in a.groups if len(g.producers) == 3]
    assert len(stage) == 1  # stem conv + the last conv of both blocks
    inner = [g for g in a.groups if len(g.producers) == 1 and g.prunable]
    assert len(inner) == 2  # the first conv of each block is free on its own
    assert all(g.prunable for g in stage)


def test_concat_splits_into_offset_ranges():
    c, a = _analysis(fire_like())
    final_conv = a.layers[-2]  # the 1x1 conv after the concat
    assert len(final_conv.in_groups) == 2  # expand1x1 and expand3x3 are separate groups
    slices = [s for s in a.slices if s.node == final_conv.name and s.role == "in"]
    assert len(slices) == 1 and [seg.length for seg in slices[0].layout.segments] == [8, 8]


def test_depthwise_follows_its_producer():
    c, a = _analysis(mobilenet_like())
    dw = next(l for l in a.layers if l.depthwise)
    expand = _group_of(a, a.layers[1].name)
    assert dw.name in expand.members
    assert any(f.node == dw.name for f in a.group_attr_fixes)


def test_grouped_conv_couples_its_groups_channel_by_channel():
    """A grouped conv (group=2) keeps its groups: input channel j of both groups is one channel
    of the analysis (4 = 8 / 2), and so is output channel j."""
    g = GraphBuilder()
    x = g.relu(g.conv("x", 3, 8))
    y = g.relu(g.conv(x, 8, 8, group=2))
    _, a = _analysis(g.build(g.head(y, 8)))
    assert [grp.channels for grp in a.groups if grp.prunable] == [4, 4]
    assert all(len(grp.spaces) == 2 for grp in a.groups if grp.prunable)


def test_unknown_op_freezes_neighbourhood_without_failing():
    g = GraphBuilder()
    x = g.relu(g.conv("x", 3, 8))
    y = g.node("LRN", [x], size=3)  # mixes neighbouring channels: not in the op table
    z = g.relu(g.conv(y, 8, 6))
    _, a = _analysis(g.build(g.head(z, 6)))
    first = _group_of(a, a.layers[0].name)
    assert not first.prunable and "unknown op" in first.reason
    assert _group_of(a, a.layers[1].name).prunable  # the rest still compresses


def test_custom_domain_op_frozen():
    import onnx

    g = GraphBuilder()
    x = g.relu(g.conv("x", 3, 8))
    y = g.relu(g.conv(x, 8, 6))
    m = g.build(g.head(y, 6))
    m.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    for n in m.graph.node:
        if n.op_type == "Relu":
            n.domain = "com.example"
            n.op_type = "MyAct"
            break
    from onnxcompress.compiler.onnx_io import export_graph

    a = analyze(import_graph(m))
    assert not a.groups[0].prunable and "MyAct" in a.groups[0].reason


def test_flatten_into_gemm_tracks_blocks():
    g = GraphBuilder(size=4)
    x = g.relu(g.conv("x", 3, 5))
    f = g.node("Flatten", [x], axis=1)
    w = g.const(np.ones((5 * 16, 7), np.float32))
    y = g.node("MatMul", [f, w])
    _, a = _analysis(g.build(y))
    s = next(s for s in a.slices if s.role == "in" and s.node == a.layers[-1].name)
    assert s.layout.block == (5, 4, 4) and s.layout.block_axis == 0
    keep = {s.layout.segments[0].space: np.array([1, 3])}
    idx = s.layout.indices(keep)
    assert list(idx) == list(range(16, 32)) + list(range(48, 64))


def test_nhwc_flatten_after_transpose():
    g = GraphBuilder(size=4)
    x = g.relu(g.conv("x", 3, 5))
    t = g.node("Transpose", [x], perm=[0, 2, 3, 1])
    f = g.node("Reshape", [t, g.const(np.array([-1, 80], np.int64), "s")])
    y = g.node("Gemm", [f, g.const(np.ones((80, 4), np.float32))])
    _, a = _analysis(g.build(y))
    s = next(s for s in a.slices if s.role == "in")
    assert s.layout.block == (4, 4, 5) and s.layout.block_axis == 2
    assert a.groups[0].prunable


def test_reshape_hardcoding_channels_freezes():
    g = GraphBuilder(size=4)
    x = g.relu(g.conv("x", 3, 6))
    r = g.node("Reshape", [x, g.const(np.array([0, 2, 3, 16], np.int64), "s")])
    y = g.node("Reshape", [r, g.const(np.array([0, 96], np.int64), "s")])
    _, a = _analysis(g.build(y))
    assert not a.groups[0].prunable and "Reshape" in a.groups[0].reason


def test_graph_output_frozen_and_removable_units():
    c, a = _analysis(resnet_like(blocks=2))
    head = a.groups[-1]
    assert not head.prunable and "graph output" in head.reason
    kinds = [u.kind for u in a.removable]
    assert kinds.count("residual_block") == 2 and "layer" in kinds


def test_costs_match_independent_count():
    for model in (resnet_like(), fire_like(), mobilenet_like()):
        c, a = _analysis(model)
        assert a.macs == conv_macs(c) == model_cost(c).macs
        assert SearchCost(a).macs({}) == a.macs


def test_quantizable_ops():
    c, a = _analysis(resnet_like())
    assert set(a.quantizable) == {l.name for l in a.layers}


PUBLISHED = {
    "cifar10_resnet8_mlperftiny_tf2onnx.onnx": 12.5e6,
    "imagenet_squeezenet1.1_fp32_from_winml_fp16.onnx": 349e6,
}


@pytest.mark.parametrize("name,macs", sorted(PUBLISHED.items()))
def test_published_mac_counts(name, macs):
    from onnxcompress.compiler.onnx_io import load_model

    c = canonicalize(load_model(realdata_path("models", name)))
    a = analyze(import_graph(c))
    assert abs(a.macs - macs) / macs < 0.01
    assert a.macs == conv_macs(c)


def test_resnet8_groups_and_squeezenet_offsets():
    from onnxcompress.compiler.onnx_io import load_model

    c = canonicalize(load_model(realdata_path("models", "cifar10_resnet8_mlperftiny_tf2onnx.onnx")))
    a = analyze(import_graph(c))
    coupled = [g for g in a.groups if len(g.producers) == 2]
    assert [g.channels for g in coupled] == [16, 32, 64]  # one group per stage
    s = canonicalize(load_model(realdata_path("models", "imagenet_squeezenet1.1_fp32_from_winml_fp16.onnx")))
    sa = analyze(import_graph(s))
    concat_readers = [x for x in sa.slices if x.role == "in" and len(x.layout.segments) == 2]
    assert len(concat_readers) == 8  # every fire module's concat feeds one conv in two ranges


def test_analysis_is_pure_and_ignores_node_order():
    """analyze() never reorders (or otherwise changes) the graph it reads, and a graph whose node
    list is out of topological order gives the same analysis as the sorted one."""
    c = canonicalize(resnet_like(blocks=2))
    sorted_graph = import_graph(c)
    expected = analyze(sorted_graph)
    shuffled = import_graph(c)
    shuffled.nodes = list(reversed(shuffled.nodes))
    before = [n.name for n in shuffled.nodes]
    got = analyze(shuffled)
    assert [n.name for n in shuffled.nodes] == before
    assert [g.to_json() for g in got.groups] == [g.to_json() for g in expected.groups]
    assert [u.to_json() for u in got.removable] == [u.to_json() for u in expected.removable]
    assert [l.to_json() for l in got.layers] == [l.to_json() for l in expected.layers]


def test_groups_are_components_of_the_coupling_graph_and_indexed():
    import networkx as nx

    from onnxcompress.compiler.graph import NodeGraph
    from onnxcompress.compiler.ir import trace

    c, a = _analysis(resnet_like(blocks=2))
    tracer, _ = trace(NodeGraph(import_graph(c)))
    components = sorted(tuple(sorted(cc)) for cc in nx.connected_components(tracer.coupling))
    assert components == sorted(g.spaces for g in a.groups)
    for g in a.groups:
        assert a.group(g.id) is g
        for p in g.producers:
            assert a.group_of_node(p) is g
    for u in a.removable:
        assert a.unit(u.id) is u and a.unit_of_anchor(u.anchor) is u
    # the IR's graph carries the channel layouts on its tensor vertices
    layouts = {v[1]: d["layout"] for v, d in a.graph.nx.nodes(data=True) if d.get("kind") == "tensor"}
    assert {k: layouts[k] for k in a.tensor_layouts if k in layouts} == {k: v for k, v in a.tensor_layouts.items() if k in layouts}
    assert any(l is not None for l in layouts.values())


def test_residual_block_is_the_dominated_region():
    """Each residual unit's fork (the tensor its shortcut starts from) is the immediate dominator
    of its Add, and every branch op is dominated by that fork."""
    import networkx as nx

    from onnxcompress.compiler.graph import SOURCE, op_vertex

    c, a = _analysis(resnet_like(blocks=2))
    g = a.graph.with_source()
    idom = nx.immediate_dominators(g, SOURCE)
    blocks = [u for u in a.removable if u.kind == "residual_block"]
    assert len(blocks) == 2
    for u in blocks:
        fork = idom[op_vertex(u.anchor)]
        assert fork == ("tensor", u.keep_input)
        for n in u.nodes[:-1]:
            v = op_vertex(n)
            while v != SOURCE and v != fork:
                v = idom[v]
            assert v == fork
