"""Depth families (search/depth.py): blocks ranked by what removing each alone changes, and
families that remove the least damaging ones up to a share of the MACs reduction asked for."""

from __future__ import annotations

import numpy as np
import onnx

from onnxcompress.compiler.cost import model_cost
from onnxcompress.compiler.ir import analyze
from onnxcompress.compiler.onnx_io import canonicalize, import_graph
from onnxcompress.search.depth import BlockDamage, depth_families, depth_family, rank_blocks
from tests.builders import resnet_like

X = np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32)


def _silence_block(model: onnx.ModelProto, unit) -> onnx.ModelProto:
    """`model` with the last conv of residual `unit`'s branch zeroed: the branch adds nothing."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = {n.name: n for n in out.graph.node}
    last = [n for n in unit.nodes if nodes[n].op_type == "Conv"][-1]
    for init in out.graph.initializer:
        if init.name in nodes[last].input[1:]:
            init.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(onnx.numpy_helper.to_array(init)), init.name))
    return out


def test_a_block_that_adds_nothing_ranks_first_with_no_damage():
    model = canonicalize(resnet_like(blocks=3))
    units = [u for u in analyze(import_graph(model)).removable if u.kind == "residual_block"]
    assert len(units) == 3
    silent = _silence_block(model, units[1])
    ranked = rank_blocks(silent, X)
    assert [d.block for d in ranked][0] == units[1].id
    assert ranked[0].kl < 1e-9 and ranked[0].agreement == 1.0
    assert all(d.kl > 1e-6 for d in ranked[1:])


def test_depth_family_takes_the_cheapest_blocks_up_to_the_share():
    ranked = [BlockDamage("b7", 10, 0.01, 1.0), BlockDamage("b2", 10, 0.02, 1.0), BlockDamage("b4", 30, 0.03, 1.0), BlockDamage("b1", 10, 0.5, 0.9)]
    # target 0.5 of 100 MACs: 50 to save
    assert depth_family(ranked, 100, 0.5, 1.0) == ("b2", "b4", "b7")  # 50, in id order
    assert depth_family(ranked, 100, 0.5, 0.5) == ("b2", "b7")  # 20: b4 would reach 50, past 25 + 15; b1 is never reached
    assert depth_family(ranked, 100, 0.9, 1.0) == ("b7",)  # 10 to save
    assert depth_family(ranked, 100, 1.0, 1.0) == ()


def test_depth_families_for_a_target():
    model = canonicalize(resnet_like(blocks=3))
    families, ranked = depth_families(model, X, 0.6, 3)
    assert families[0] == () and len(ranked) == 3
    total = model_cost(model).macs
    for fam in families[1:]:
        saved = sum(d.macs for d in ranked if d.block in fam)
        assert 0 < saved <= 0.4 * total + max(d.macs for d in ranked)
    assert depth_families(model, X, None, 3) == ([()], [])
    assert depth_families(model, X, 0.5, 1) == ([()], [])
