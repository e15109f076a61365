"""The IR's graph: a networkx view of an ONNX graph, where the analyses run.

`NodeGraph(graph)` is a bipartite networkx DiGraph with one vertex per op ("op", name) and one per
non-constant tensor ("tensor", name), edges tensor -> op (the op reads it, `index` = input slot)
and op -> tensor (the op writes it, `index` = output slot). Vertex attributes are typed:

    op vertex:      kind="op", op, domain, position (its place in `order`), level
    tensor vertex:  kind="tensor", shape, graph_input, graph_output, layout (the channel layout
                    the channel analysis gave it; None where no channels are tracked)

Constants (weights, shape targets) are not vertices: they are read through the gs.Node of the
op (`node(name)`), as the passes rewrite them. The gs.Graph stays the one mutable source of truth;
this view is rebuilt after every pass and never changes the graph it was built from.

Order: `order` lists the ops in the topological order onnx-graphsurgeon's `toposort()` would give
(a stable sort by hierarchy level: 0 for ops that read only graph inputs and constants, else one
more than the deepest producer), computed here without sorting the caller's graph in place.
Group ids ("g3") and unit ids ("b2") follow that order, so they are stable across tools.
"""

from __future__ import annotations

from typing import Iterator

import networkx as nx
import onnx_graphsurgeon as gs

SOURCE = ("source", "")  # virtual vertex feeding every graph input (the root of dominator analyses)


def op_vertex(name: str) -> tuple[str, str]:
    return ("op", name)


def tensor_vertex(name: str) -> tuple[str, str]:
    return ("tensor", name)


class NodeGraph:
    """The networkx graph of one gs.Graph (see the module docstring)."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.nx = nx.DiGraph()
        self._nodes: dict[str, gs.Node] = {}
        outputs = {t.name for t in graph.outputs}
        inputs = {t.name for t in graph.inputs}
        for i, node in enumerate(graph.nodes):
            self._nodes[node.name] = node
            self.nx.add_node(op_vertex(node.name), kind="op", op=node.op, domain=node.domain or "", index=i)
        for node in graph.nodes:
            v = op_vertex(node.name)
            for k, t in enumerate(node.inputs):
                if isinstance(t, gs.Constant) or not t.name:
                    continue
                self._add_tensor(t, inputs, outputs)
                self.nx.add_edge(tensor_vertex(t.name), v, index=k)
            for k, t in enumerate(node.outputs):
                self._add_tensor(t, inputs, outputs)
                self.nx.add_edge(v, tensor_vertex(t.name), index=k)
        for t in graph.inputs:
            if not isinstance(t, gs.Constant):
                self._add_tensor(t, inputs, outputs)
        self.order: tuple[str, ...] = self._level_order()
        self.position: dict[str, int] = {name: i for i, name in enumerate(self.order)}
        for name, i in self.position.items():
            self.nx.nodes[op_vertex(name)]["position"] = i

    def _add_tensor(self, t: gs.Tensor, inputs: set[str], outputs: set[str]) -> None:
        v = tensor_vertex(t.name)
        if v not in self.nx:
            shape = tuple(t.shape) if t.shape is not None else None
            self.nx.add_node(v, kind="tensor", shape=shape, graph_input=t.name in inputs, graph_output=t.name in outputs, layout=None)

    def _level_order(self) -> tuple[str, ...]:
        level: dict[str, int] = {}
        for v in nx.topological_sort(self.nx):
            if v[0] != "op":
                continue
            producers = [p for t in self.nx.predecessors(v) for p in self.nx.predecessors(t)]
            level[v[1]] = 1 + max((level[p[1]] for p in producers), default=-1)
        index = nx.get_node_attributes(self.nx, "index")
        return tuple(sorted(level, key=lambda n: (level[n], index[op_vertex(n)])))

    # -- reading ---------------------------------------------------------------------------------
    def node(self, name: str) -> gs.Node:
        return self._nodes[name]

    def nodes(self) -> Iterator[gs.Node]:
        """gs nodes in topological order."""
        return (self._nodes[n] for n in self.order)

    def producer(self, tensor: str) -> str | None:
        v = tensor_vertex(tensor)
        if v not in self.nx:
            return None
        preds = list(self.nx.predecessors(v))
        return preds[0][1] if preds else None

    def consumers(self, tensor: str) -> list[str]:
        v = tensor_vertex(tensor)
        return [c[1] for c in self.nx.successors(v)] if v in self.nx else []

    def is_graph_output(self, tensor: str) -> bool:
        v = tensor_vertex(tensor)
        return v in self.nx and bool(self.nx.nodes[v]["graph_output"])

    def with_source(self) -> nx.DiGraph:
        """The graph plus SOURCE -> every root (graph inputs, and ops that read only constants),
        so that every vertex is reachable from one root (for dominators)."""
        g = self.nx.copy()
        g.add_node(SOURCE, kind="source")
        for v in list(g.nodes):
            if v != SOURCE and g.in_degree(v) == 0:
                g.add_edge(SOURCE, v)
        return g

    def dominators(self) -> dict:
        """Immediate dominator of every vertex (networkx's Cooper-Harvey-Kennedy algorithm)."""
        return nx.immediate_dominators(self.with_source(), SOURCE)

    def ancestors(self, vertex) -> set:
        return nx.ancestors(self.nx, vertex)


__all__ = ["NodeGraph", "SOURCE", "op_vertex", "tensor_vertex"]
