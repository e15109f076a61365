"""Removable units: residual branches and shape-preserving layers (N2N's layer removal).

A residual block is an Add of two tensors that fork from one tensor F: the side with the layers is
the branch, the other the shortcut (identity, or a cheaper projection). Dropping the branch makes
the Add's output the shortcut, which has the same shape, so the model stays valid.

A shape-preserving layer is a Conv whose output has its input's shape (same channels, stride 1,
"same" padding), together with the BatchNormalization/activation nodes that only it feeds.
Dropping it connects its input straight to its consumers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx_graphsurgeon as gs

from onnxcompress.compiler.ops import const

if TYPE_CHECKING:  # pragma: no cover
    from onnxcompress.compiler.ir import Layer, RemovableUnit

_CHAIN_OPS = {"BatchNormalization", "Relu", "Clip", "LeakyRelu", "HardSwish", "Sigmoid", "Elu", "PRelu", "Tanh"}


def _producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if not isinstance(t, gs.Constant) and t.inputs else None


def _backward_tensors(t: gs.Tensor) -> dict[str, gs.Tensor]:
    seen: dict[str, gs.Tensor] = {}
    stack = [t]
    while stack:
        cur = stack.pop()
        if cur.name in seen or isinstance(cur, gs.Constant):
            continue
        seen[cur.name] = cur
        p = _producer(cur)
        if p is not None:
            stack.extend(p.inputs)
    return seen


def _nodes_between(fork: gs.Tensor, end: gs.Tensor) -> list[gs.Node] | None:
    """Nodes on every path from `fork` to `end` (exclusive of fork's producer). None if `end`
    depends on some graph input other than through `fork`."""
    nodes: dict[str, gs.Node] = {}
    stack = [end]
    while stack:
        cur = stack.pop()
        if cur is fork or isinstance(cur, gs.Constant):
            continue
        p = _producer(cur)
        if p is None:
            return None  # reaches a graph input without passing the fork
        if p.name in nodes:
            continue
        nodes[p.name] = p
        stack.extend(p.inputs)
    return list(nodes.values())


def _closed(nodes: list[gs.Node], allowed_consumers: set[str], graph: gs.Graph) -> bool:
    """Every output of `nodes` is used only inside `nodes` or by `allowed_consumers`."""
    names = {n.name for n in nodes} | allowed_consumers
    for n in nodes:
        for t in n.outputs:
            if t in graph.outputs:
                return False
            if any(c.name not in names for c in t.outputs):
                return False
    return True


def _residual_units(graph: gs.Graph, order: dict[str, int], layers: dict[str, "Layer"]) -> list[tuple]:
    found = []
    for add in graph.nodes:
        if add.op not in ("Add", "Sum") or len(add.inputs) != 2 or any(isinstance(t, gs.Constant) for t in add.inputs):
            continue
        a, b = add.inputs
        if a.shape is None or b.shape is None or tuple(a.shape) != tuple(b.shape) or add.outputs[0] in graph.outputs:
            continue
        back_a, back_b = _backward_tensors(a), _backward_tensors(b)
        common = [back_a[n] for n in back_a if n in back_b]
        if not common:
            continue
        fork = max(common, key=lambda t: order.get(_producer(t).name, -1) if _producer(t) else -1)
        sides = [_nodes_between(fork, a), _nodes_between(fork, b)]
        if any(s is None for s in sides):
            continue
        macs = [sum(layers[n.name].macs for n in s if n.name in layers) for s in sides]
        if macs[0] == macs[1] and len(sides[0]) == len(sides[1]):
            continue  # symmetric: no branch/shortcut distinction
        bi = 0 if macs[0] > macs[1] or (macs[0] == macs[1] and len(sides[0]) > len(sides[1])) else 1
        branch, shortcut = sides[bi], add.inputs[1 - bi]
        if not any(n.name in layers for n in branch):
            continue
        if not _closed(branch, {add.name}, graph):
            continue
        branch.sort(key=lambda n: order[n.name])
        found.append(("residual_block", add.name, tuple(n.name for n in branch) + (add.name,), shortcut.name, add.outputs[0].name, macs[bi]))
    return found


def _layer_units(graph: gs.Graph, layers: dict[str, "Layer"]) -> list[tuple]:
    found = []
    for node in graph.nodes:
        if node.op != "Conv" or node.name not in layers:
            continue
        x, y = node.inputs[0], node.outputs[0]
        if x.shape is None or y.shape is None or tuple(x.shape) != tuple(y.shape) or const(node.inputs[1]) is None:
            continue
        chain = [node]
        end = y
        while len(end.outputs) == 1 and end.outputs[0].op in _CHAIN_OPS and end not in graph.outputs:
            nxt = end.outputs[0]
            if any(not isinstance(t, gs.Constant) and t is not end for t in nxt.inputs):
                break
            chain.append(nxt)
            end = nxt.outputs[0]
        if end in graph.outputs or not end.outputs:
            continue
        found.append(("layer", node.name, tuple(n.name for n in chain), x.name, end.name, layers[node.name].macs))
    return found


def find_removable(graph: gs.Graph, layers: dict[str, "Layer"]) -> list["RemovableUnit"]:
    from onnxcompress.compiler.ir import RemovableUnit

    order = {n.name: i for i, n in enumerate(graph.nodes)}
    units = _residual_units(graph, order, layers) + _layer_units(graph, layers)
    units.sort(key=lambda u: (order[u[1]], u[0] != "residual_block"))
    return [
        RemovableUnit(id=f"b{i}", kind=kind, nodes=nodes, anchor=anchor, keep_input=keep, replaced_output=out, macs=macs)
        for i, (kind, anchor, nodes, keep, out, macs) in enumerate(units)
    ]
