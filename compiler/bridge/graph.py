"""Graph structure helpers of the bridge: node order, consumers, which initializers are
trainable weights, where the logits are."""

from __future__ import annotations

import heapq
import re
from collections.abc import Mapping, Sequence

import onnx

from onnxcompress.compiler.bridge.nodes import NodeInfo
from onnxcompress.compiler.errors import ModelError
from onnxcompress.compiler.ops import ARITHMETIC_OPS, LAYER_OPS, LOGITS_VIEW_OPS, VIEW_OPS, WEIGHT_SLOTS

# ---------------------------------------------------------------------------------------------
# Graph structure helpers
# ---------------------------------------------------------------------------------------------


def toposort(nodes: Sequence[onnx.NodeProto], available: set[str]) -> list[int]:
    """Indices of `nodes` in a topological order that keeps the file order where it can."""
    producers: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                producers[o] = i
    waiting: dict[int, int] = {}
    users: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    for i, n in enumerate(nodes):
        deps = {producers[x] for x in n.input if x and x not in available and x in producers}
        missing = [x for x in n.input if x and x not in available and x not in producers]
        if missing:
            raise ModelError(f"node {n.name or n.op_type!r} reads {missing[0]!r}, which nothing produces")
        waiting[i] = len(deps)
        for d in deps:
            users[d].append(i)
    ready = [i for i, c in waiting.items() if c == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ModelError("the graph has a cycle; ONNX graphs must be acyclic")
    return order


def consumers_of(nodes: Sequence[NodeInfo]) -> dict[str, list[tuple[NodeInfo, int]]]:
    out: dict[str, list[tuple[NodeInfo, int]]] = {}
    for n in nodes:
        for slot, name in enumerate(n.inputs):
            if name:
                out.setdefault(name, []).append((n, slot))
    return out


def effective_consumers(
    name: str, consumers: Mapping[str, list[tuple[NodeInfo, int]]]
) -> list[tuple[NodeInfo, int]]:
    """Consumers of `name`, looking through view ops (e.g. a MatMul weight behind a Reshape)."""
    out: list[tuple[NodeInfo, int]] = []
    stack, seen = [name], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        for node, slot in consumers.get(current, []):
            if node.op_type in VIEW_OPS and slot == 0:
                stack.extend(o for o in node.outputs if o)
            else:
                out.append((node, slot))
    return out


def is_trainable(
    name: str,
    numel: int,
    consumers: Mapping[str, list[tuple[NodeInfo, int]]],
    producers: Mapping[str, NodeInfo],
    input_derived: set[str],
) -> bool:
    """Whether a float initializer holds learned weights (and so should be trained)."""
    for node, slot in effective_consumers(name, consumers):
        if slot in WEIGHT_SLOTS.get(node.op_type, ()):
            return True
        if node.op_type in ARITHMETIC_OPS:
            others = [x for i, x in enumerate(node.inputs) if i != slot and x]
            if any(o in input_derived for o in others):
                continue  # preprocessing folded into the graph (x - mean) / std: keep it fixed
            after_linear = any(o in producers and producers[o].op_type in LAYER_OPS for o in others)
            if numel > 1 or after_linear:
                return True
    return False


def derived_from_input(input_name: str, consumers: Mapping[str, list[tuple[NodeInfo, int]]]) -> set[str]:
    """The data input and tensors that are only views of it (e.g. the NHWC->NCHW Transpose)."""
    out = {input_name}
    stack = [input_name]
    while stack:
        for node, slot in consumers.get(stack.pop(), []):
            if node.op_type in VIEW_OPS and slot == 0:
                for o in node.outputs:
                    if o and o not in out:
                        out.add(o)
                        stack.append(o)
    return out


def find_logits(nodes: Sequence[NodeInfo], output: str) -> tuple[str, bool]:
    """(tensor holding the logits, whether the output is a Softmax of them). Looks back through
    shape-only ops, e.g. Softmax -> Reshape -> output."""
    producers = {o: n for n in nodes for o in n.outputs if o}
    name = output
    while name in producers and producers[name].op_type in LOGITS_VIEW_OPS:
        name = producers[name].inputs[0]
    node = producers.get(name)
    if node is not None and node.op_type == "Softmax":
        return node.inputs[0], True
    return output, False


def safe_key(name: str, taken: set[str]) -> str:
    base = "t_" + re.sub(r"\W", "_", name)
    key, k = base, 1
    while key in taken:
        key = f"{base}_{k}"
        k += 1
    taken.add(key)
    return key

