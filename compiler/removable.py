"""Removable units: residual branches and shape-preserving layers (N2N's layer removal).

A residual block is a single-entry single-exit region of the graph: an Add of two tensors whose
immediate dominator (networkx's dominator analysis over the ops-and-tensors graph of
compiler/graph.py) is the tensor F that both sides fork from. The side with the layers is the
branch, the other the shortcut (identity, or a cheaper projection). The branch must have one exit,
the Add (nothing else reads what it computes): then dropping it makes the Add's output the
shortcut, which has the same shape, so the model stays valid.

A shape-preserving layer is a Conv whose output has its input's shape (same channels, stride 1,
"same" padding), together with the BatchNormalization/activation nodes that only it feeds (a
chain: the `chain` fact of the op table). Dropping it connects its input to its consumers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx_graphsurgeon as gs

from onnxcompress.compiler.graph import NodeGraph, op_vertex, tensor_vertex
from onnxcompress.compiler.ops import CHAIN_OPS, const

if TYPE_CHECKING:  # pragma: no cover
    from onnxcompress.compiler.ir import Layer, RemovableUnit


def _side(ng: NodeGraph, fork, end: str) -> list[str] | None:
    """Ops on the paths from `fork` to tensor `end` (the region between them): the ancestors of
    `end` that are not ancestors of the fork. None if one of them reads a graph input other than
    through the fork."""
    if tensor_vertex(end) == fork:
        return []
    region = ng.ancestors(tensor_vertex(end)) - ng.ancestors(fork) - {fork}
    if any(v[0] == "tensor" and ng.nx.nodes[v]["graph_input"] for v in region):
        return None
    return [v[1] for v in region if v[0] == "op"]


def _single_exit(ng: NodeGraph, ops: list[str], exit_op: str) -> bool:
    """Every tensor the region computes is read only inside it or by `exit_op`, and none is a
    graph output."""
    names = set(ops) | {exit_op}
    for name in ops:
        for t in ng.node(name).outputs:
            if ng.is_graph_output(t.name) or any(c not in names for c in ng.consumers(t.name)):
                return False
    return True


def _residual_units(ng: NodeGraph, layers: dict[str, "Layer"]) -> list[tuple]:
    idom = ng.dominators()
    found = []
    for add in ng.nodes():
        if add.op not in ("Add", "Sum") or len(add.inputs) != 2 or any(isinstance(t, gs.Constant) for t in add.inputs):
            continue
        a, b = add.inputs
        if a.shape is None or b.shape is None or tuple(a.shape) != tuple(b.shape) or ng.is_graph_output(add.outputs[0].name):
            continue
        fork = idom.get(op_vertex(add.name))
        if fork is None or fork[0] != "tensor":
            continue  # the sides fork from an op with several outputs, or from separate graph inputs
        sides = [_side(ng, fork, a.name), _side(ng, fork, b.name)]
        if any(s is None for s in sides):
            continue
        macs = [sum(layers[n].macs for n in s if n in layers) for s in sides]
        if macs[0] == macs[1] and len(sides[0]) == len(sides[1]):
            continue  # symmetric: no branch/shortcut distinction
        bi = 0 if macs[0] > macs[1] or (macs[0] == macs[1] and len(sides[0]) > len(sides[1])) else 1
        branch, shortcut = sides[bi], add.inputs[1 - bi]
        if not any(n in layers for n in branch):
            continue
        if not _single_exit(ng, branch, add.name):
            continue
        branch.sort(key=lambda n: ng.position[n])
        found.append(("residual_block", add.name, tuple(branch) + (add.name,), shortcut.name, add.outputs[0].name, macs[bi]))
    return found


def _layer_units(ng: NodeGraph, layers: dict[str, "Layer"]) -> list[tuple]:
    found = []
    for node in ng.nodes():
        if node.op != "Conv" or node.name not in layers:
            continue
        x, y = node.inputs[0], node.outputs[0]
        if x.shape is None or y.shape is None or tuple(x.shape) != tuple(y.shape) or const(node.inputs[1]) is None:
            continue
        chain = [node]
        end = y
        while len(end.outputs) == 1 and end.outputs[0].op in CHAIN_OPS and not ng.is_graph_output(end.name):
            nxt = end.outputs[0]
            if any(not isinstance(t, gs.Constant) and t is not end for t in nxt.inputs):
                break
            chain.append(nxt)
            end = nxt.outputs[0]
        if ng.is_graph_output(end.name) or not end.outputs:
            continue
        found.append(("layer", node.name, tuple(n.name for n in chain), x.name, end.name, layers[node.name].macs))
    return found


def find_removable(ng: NodeGraph, layers: dict[str, "Layer"]) -> list["RemovableUnit"]:
    from onnxcompress.compiler.ir import RemovableUnit

    units = _residual_units(ng, layers) + _layer_units(ng, layers)
    units.sort(key=lambda u: (ng.position[u[1]], u[0] != "residual_block"))
    return [
        RemovableUnit(id=f"b{i}", kind=kind, nodes=nodes, anchor=anchor, keep_input=keep, replaced_output=out, macs=macs)
        for i, (kind, anchor, nodes, keep, out, macs) in enumerate(units)
    ]
