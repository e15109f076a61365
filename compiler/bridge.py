"""The thin PyTorch bridge: an ONNX graph interpreted node by node with torch ops, so that a student
can be fine-tuned with autograd and its weights written back into the very same graph.

Design:
- `OnnxModule` keeps the ONNX nodes (topologically sorted) and runs one small handler per op,
  looked up in `_OPS`, a table filled at import and read-only after. Unknown ops are refused when
  the module is built (UnsupportedOpError naming op and node), never guessed.
- Float initializers in weight positions (Conv/Gemm/MatMul weights and biases, BatchNormalization
  scale/bias, PRelu slopes, bias-like Add/Mul operands) become `nn.Parameter`s; BatchNormalization
  running statistics become persistent buffers (they change in training and are written back);
  everything else (shapes, Clip bounds, Resize scales, preprocessing constants) is a
  non-persistent buffer. ONNX names may contain '.' and ':', which torch forbids, so each
  initializer gets a safe key; `param_names` maps onnx name -> safe key.
- All float tensors are computed in float32 whatever their ONNX dtype: fp16 training on CPU is
  slow and unstable. `write_back` casts each trained value back to its original dtype and leaves
  every initializer whose value did not change byte-for-byte untouched.
- Float tensors held in Constant nodes are treated as constants, not trained.
- Exporters often fold BatchNorm into the preceding Conv; `reinsert_folded_bn` puts a trainable
  BatchNorm back after such convs (identity at insertion), and `write_back` folds it again.
"""

from __future__ import annotations

import heapq
import math
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import Tensor, nn

from onnxcompress.compiler.data import data_input
from onnxcompress.compiler.errors import DataError, ModelError, UnsupportedOpError
from onnxcompress.compiler.ops import ARITHMETIC_OPS, AXES_INPUT_SINCE, LAYER_OPS, LOGITS_VIEW_OPS, TRAINING_OUTPUTS, VIEW_OPS, WEIGHT_SLOTS

# ---------------------------------------------------------------------------------------------
# Nodes and the op table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeInfo:
    """One ONNX node, with attributes parsed to Python values once."""

    index: int
    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]
    opset: int

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def input(self, i: int) -> str:
        """Name of input i, '' when absent (optional inputs)."""
        return self.inputs[i] if i < len(self.inputs) else ""


@dataclass
class _RunContext:
    """Per-call state of one interpretation. `bn_sums` collects exact BatchNormalization input
    statistics during recalibration (node name -> [count, sum, sum of squares], float64)."""

    training: bool
    bn_sums: dict[str, list[Any]] | None = None


Handler = Callable[[NodeInfo, list[Any], _RunContext], list[Tensor]]
_OPS: dict[str, Handler] = {}


def _op(*names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for name in names:
            _OPS[name] = fn
        return fn

    return register


def supported_ops() -> frozenset[str]:
    """Op types (default ONNX domain) the bridge can run."""
    return frozenset(_OPS)


_FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
)

_TORCH_DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.FLOAT16: torch.float32,  # computed in float32, see module docstring
    onnx.TensorProto.DOUBLE: torch.float32,
    onnx.TensorProto.BFLOAT16: torch.float32,
    onnx.TensorProto.BOOL: torch.bool,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.UINT16: torch.int64,
    onnx.TensorProto.UINT32: torch.int64,
    onnx.TensorProto.UINT64: torch.int64,
}


def _parse_attrs(node: onnx.NodeProto) -> Mapping[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[a.name] = value
    return types.MappingProxyType(out)


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ModelError("the model imports no default-domain opset")


def _to_tensor(arr: np.ndarray) -> Tensor:
    if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16":
        return torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))
    if arr.dtype == np.bool_:
        return torch.from_numpy(arr.copy())
    if arr.dtype in (np.uint16, np.uint32, np.uint64):
        return torch.from_numpy(arr.astype(np.int64))
    if arr.dtype.kind in "iu":
        return torch.from_numpy(arr.copy())
    raise ModelError(f"tensor of dtype {arr.dtype} cannot be represented in torch")


# ---------------------------------------------------------------------------------------------
# Graph structure helpers
# ---------------------------------------------------------------------------------------------


def _toposort(nodes: Sequence[onnx.NodeProto], available: set[str]) -> list[int]:
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


def _consumers(nodes: Sequence[NodeInfo]) -> dict[str, list[tuple[NodeInfo, int]]]:
    out: dict[str, list[tuple[NodeInfo, int]]] = {}
    for n in nodes:
        for slot, name in enumerate(n.inputs):
            if name:
                out.setdefault(name, []).append((n, slot))
    return out


def _effective_consumers(
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


def _is_trainable(
    name: str,
    numel: int,
    consumers: Mapping[str, list[tuple[NodeInfo, int]]],
    producers: Mapping[str, NodeInfo],
    input_derived: set[str],
) -> bool:
    """Whether a float initializer holds learned weights (and so should be trained)."""
    for node, slot in _effective_consumers(name, consumers):
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


def _input_derived(input_name: str, consumers: Mapping[str, list[tuple[NodeInfo, int]]]) -> set[str]:
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


def _find_logits(nodes: Sequence[NodeInfo], output: str) -> tuple[str, bool]:
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


def _safe_key(name: str, taken: set[str]) -> str:
    base = "t_" + re.sub(r"\W", "_", name)
    key, k = base, 1
    while key in taken:
        key = f"{base}_{k}"
        k += 1
    taken.add(key)
    return key


# ---------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FoldedConv:
    """A Conv whose BatchNorm was folded by the exporter and has been re-inserted for training."""

    node: str
    output: str
    weight: str
    bias: str
    key: str


@dataclass(frozen=True)
class _Slot:
    """Where an initializer lives in the module."""

    kind: str  # "param" | "stat" | "const"
    key: str


class OnnxModule(nn.Module):
    """An ONNX graph as a torch module. `forward(x)` returns the first graph output;
    `forward(x, taps=[names])` returns (output, {name: tensor}). `logits(x)` returns the
    pre-Softmax tensor flattened to (N, K) when the graph ends in a Softmax."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        graph = model.graph
        opset = _default_opset(model)
        self.input_name = data_input(model).name
        self.output_names = tuple(o.name for o in graph.output)
        if not self.output_names:
            raise ModelError("the model has no outputs")

        arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self._float_dtypes = {t.name: arrays[t.name].dtype for t in graph.initializer if t.data_type in _FLOAT_TYPES}
        order = _toposort(graph.node, set(arrays) | {self.input_name})
        nodes: list[NodeInfo] = []
        for pos, i in enumerate(order):
            n = graph.node[i]
            nodes.append(
                NodeInfo(
                    index=pos,
                    name=n.name or f"{n.op_type}_{i}",
                    op_type=n.op_type,
                    domain=n.domain,
                    inputs=tuple(n.input),
                    outputs=tuple(n.output),
                    attrs=_parse_attrs(n),
                    opset=opset,
                )
            )
        self._check_supported(nodes, {o.name for o in graph.output})

        # Constant nodes are evaluated once, here: they become constants like initializers.
        constants = {n.outputs[0]: _constant_value(n) for n in nodes if n.op_type == "Constant"}
        self.nodes: tuple[NodeInfo, ...] = tuple(n for n in nodes if n.op_type != "Constant")
        self.all_nodes: tuple[NodeInfo, ...] = tuple(nodes)

        consumers = _consumers(self.all_nodes)
        producers = {o: n for n in self.all_nodes for o in n.outputs if o}
        derived = _input_derived(self.input_name, consumers)
        bn_stats = {
            x for n in self.all_nodes if n.op_type == "BatchNormalization" for x in n.inputs[3:5] if x
        }

        self.params = nn.ParameterDict()
        self.stats = nn.Module()  # BatchNormalization running statistics (persistent buffers)
        self.consts = nn.Module()  # shapes, bounds, scales (non-persistent buffers)
        self.inserted_bn = nn.ModuleDict()
        self.param_names: dict[str, str] = {}
        self._slots: dict[str, _Slot] = {}
        taken: set[str] = set()
        for name, arr in list(arrays.items()) + list(constants.items()):
            key = _safe_key(name, taken)
            tensor = _to_tensor(arr)
            if name in constants:
                kind = "const"
            elif name in self._float_dtypes and name in bn_stats:
                kind = "stat"
            elif name in self._float_dtypes and _is_trainable(name, arr.size, consumers, producers, derived):
                kind = "param"
            else:
                kind = "const"
            if kind == "param":
                self.params[key] = nn.Parameter(tensor)
                self.param_names[name] = key
            elif kind == "stat":
                self.stats.register_buffer(key, tensor, persistent=True)
            else:
                self.consts.register_buffer(key, tensor, persistent=False)
            self._slots[name] = _Slot(kind, key)

        self.onnx_names = {key: name for name, key in self.param_names.items()}  # safe key -> onnx name
        self.logits_name, self.ends_in_softmax = _find_logits(self.nodes, self.output_names[0])
        self._free_after = self._liveness()
        self._known = frozenset(self.tensor_names()) | frozenset(self._slots)
        self._folded: tuple[_FoldedConv, ...] = ()
        self._bn_after: dict[str, str] = {}

    # -- construction helpers -----------------------------------------------------------------

    @staticmethod
    def _check_supported(nodes: Sequence[NodeInfo], graph_outputs: set[str]) -> None:
        used = {x for n in nodes for x in n.inputs if x} | graph_outputs
        problems: list[str] = []
        for n in nodes:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                continue  # evaluated once when the module is built
            if n.domain not in ("", "ai.onnx") or n.op_type not in _OPS:
                label = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}:{n.op_type}"
                problems.append(f"op {label} (node {n.name!r})")
            elif n.op_type in TRAINING_OUTPUTS and any(o in used for o in n.outputs[1:]):
                problems.append(f"op {n.op_type} with its {TRAINING_OUTPUTS[n.op_type]} output (node {n.name!r})")
        if problems:
            shown = ", ".join(problems[:5]) + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise UnsupportedOpError(
                f"the PyTorch bridge does not support {shown}; fine-tuning needs every op in torch"
            )

    def _liveness(self) -> dict[int, tuple[str, ...]]:
        """Names that no later node reads, per node index: freed during a run to save memory."""
        last: dict[str, int] = {}
        for n in self.nodes:
            for x in n.inputs:
                if x and x not in self._slots:
                    last[x] = n.index
        free: dict[int, list[str]] = {}
        for name, pos in last.items():
            if name not in self.output_names:
                free.setdefault(pos, []).append(name)
        return {k: tuple(v) for k, v in free.items()}

    # -- introspection ------------------------------------------------------------------------

    def initializer(self, name: str) -> Tensor:
        """The live tensor (parameter or buffer) that stands for an ONNX initializer."""
        slot = self._slots[name]
        if slot.kind == "param":
            return self.params[slot.key]
        return getattr(self.stats if slot.kind == "stat" else self.consts, slot.key)

    def tensor_names(self) -> tuple[str, ...]:
        """Every tensor a tap can ask for: the input and all node outputs, in execution order."""
        return (self.input_name,) + tuple(o for n in self.nodes for o in n.outputs if o)

    def producer(self, name: str) -> NodeInfo | None:
        return next((n for n in self.all_nodes if name in n.outputs), None)

    def trainable_initializers(self) -> tuple[str, ...]:
        return tuple(self.param_names)

    @torch.no_grad()
    def tensor_shapes(self, x: Tensor | np.ndarray) -> dict[str, tuple[int, ...]]:
        """Shapes of every node output for the batch `x` (one sample is enough)."""
        names = [n for n in self.tensor_names() if n != self.input_name]
        was_training = self.training
        self.eval()
        try:
            env = self._run(_as_input(x), set(names), _RunContext(training=False))
        finally:
            self.train(was_training)
        return {n: tuple(env[n].shape) for n in names if isinstance(env.get(n), Tensor)}

    # -- running ------------------------------------------------------------------------------

    def forward(self, x: Tensor, taps: Sequence[str] | None = None) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        wanted = set(self.output_names[:1]) | set(taps or ())
        env = self._run(x, wanted, _RunContext(training=self.training))
        out = env[self.output_names[0]]
        if taps is None:
            return out
        return out, {n: env[n] for n in taps}

    def logits(self, x: Tensor, taps: Sequence[str] | None = None) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Logits (N, K): the Softmax input when the graph ends in a Softmax (the Softmax itself is
        not run), else the first output; flattened after the batch axis."""
        wanted = {self.logits_name} | set(taps or ())
        env = self._run(x, wanted, _RunContext(training=self.training))
        z = env[self.logits_name].flatten(1)
        if taps is None:
            return z
        return z, {n: env[n] for n in taps}

    def _run(self, x: Tensor, wanted: set[str], ctx: _RunContext) -> dict[str, Tensor]:
        unknown = wanted - self._known
        if unknown:
            raise KeyError(f"no tensor named {sorted(unknown)[0]!r} in the graph")
        env: dict[str, Any] = {name: self.initializer(name) for name in self._slots}
        env[self.input_name] = _as_input(x)
        remaining = wanted - env.keys()
        for node in self.nodes:
            if not remaining:
                break
            args = [env[name] if name else None for name in node.inputs]
            try:
                results = _OPS[node.op_type](node, args, ctx)
            except UnsupportedOpError:
                raise
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ModelError(f"node {node.name!r} ({node.op_type}) failed in the PyTorch bridge: {msg}") from exc
            for name, value in zip(node.outputs, results):
                if not name:
                    continue
                if name in self._bn_after:
                    value = self.inserted_bn[self._bn_after[name]](value)
                env[name] = value
                remaining.discard(name)
            for name in self._free_after.get(node.index, ()):
                if name not in wanted:
                    env.pop(name, None)
        return env

    # -- BatchNorm re-insertion ---------------------------------------------------------------

    def folded_bn_candidates(self) -> tuple[NodeInfo, ...]:
        """Convs with a bias initializer whose output feeds no BatchNormalization: their BN was
        folded by the exporter. Shared weights and graph outputs are left alone (folding back
        would change the other users)."""
        consumers = _consumers(self.all_nodes)
        out = []
        for n in self.nodes:
            if n.op_type != "Conv" or len(n.inputs) < 3 or not n.inputs[2]:
                continue
            w, b, y = n.inputs[1], n.inputs[2], n.outputs[0]
            if w not in self.param_names or b not in self.param_names or y in self.output_names:
                continue
            users = consumers.get(y, [])
            if not users or any(u.op_type == "BatchNormalization" for u, _ in users):
                continue
            if len(consumers.get(w, [])) != 1 or len(consumers.get(b, [])) != 1:
                continue
            out.append(n)
        return tuple(out)

    @torch.no_grad()
    def reinsert_folded_bn(self, x_batches: Iterable[Tensor | np.ndarray], eps: float = 1e-5) -> int:
        """Inserts a trainable BatchNorm after every folded-BN conv, initialised to the identity
        in eval mode from the conv outputs' per-channel statistics on `x_batches`:
        running stats = measured (mean, var), weight = sqrt(var + eps), bias = mean.
        Returns how many were inserted. `write_back` folds them into the conv weight/bias."""
        if self._folded:
            raise ModelError("BatchNorm layers were already re-inserted into this module")
        convs = self.folded_bn_candidates()
        if not convs:
            return 0
        names = [c.outputs[0] for c in convs]
        sums = _ChannelStats()
        was_training = self.training
        self.eval()
        try:
            for xb in x_batches:
                env = self._run(_as_input(xb), set(names), _RunContext(training=False))
                for name in names:
                    sums.add(name, env[name])
        finally:
            self.train(was_training)
        if not sums.count:
            raise DataError("no batches to measure BatchNorm statistics on; pass at least one training batch")
        folded = []
        taken = set(self.inserted_bn.keys())
        for conv in convs:
            y = conv.outputs[0]
            mean, var = sums.mean_var(y)
            dims = self.initializer(conv.inputs[1]).dim() - 2
            bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1](len(mean), eps=eps)
            bn.running_mean.copy_(mean.float())
            bn.running_var.copy_(var.float())
            # float32 arithmetic, exactly as the fold in float_values computes the scale, so
            # that an untrained fold-back scales by exactly 1.0 and reproduces the weights.
            bn.weight.copy_(torch.sqrt(bn.running_var + eps))
            bn.bias.copy_(bn.running_mean)
            key = _safe_key(conv.name, taken)
            self.inserted_bn[key] = bn
            self._bn_after[y] = key
            folded.append(_FoldedConv(conv.name, y, conv.inputs[1], conv.inputs[2], key))
        self._folded = tuple(folded)
        return len(folded)

    # -- writing back -------------------------------------------------------------------------

    @torch.no_grad()
    def float_values(self) -> dict[str, np.ndarray]:
        """Current value of every float initializer (re-inserted BatchNorms folded in)."""
        out = {name: self.initializer(name).detach().cpu().numpy() for name in self._float_dtypes}
        for f in self._folded:
            bn = self.inserted_bn[f.key]
            w = self.initializer(f.weight).detach().double()
            b = self.initializer(f.bias).detach().double()
            # The scale in float32 (exactly 1.0 before training, see reinsert_folded_bn), the rest
            # in float64 so that (b - mean) + mean gives b back: an untrained round trip is exact.
            s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).double()
            w_new = w * s.reshape((-1,) + (1,) * (w.dim() - 1))
            b_new = (b - bn.running_mean.double()) * s + bn.bias.double()
            out[f.weight] = w_new.numpy()
            out[f.bias] = b_new.numpy()
        return out

    def write_back(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of `model` (the graph this module was built from) with the trained float
        initializer values; same names and dtypes, untouched where the value did not change."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        values = self.float_values()
        seen = set()
        for tensor in out.graph.initializer:
            if tensor.name not in values:
                continue
            seen.add(tensor.name)
            original = numpy_helper.to_array(tensor)
            new = values[tensor.name]
            if new.shape != original.shape:
                raise ModelError(
                    f"initializer {tensor.name!r} is {original.shape} in the model but {new.shape} in the "
                    "module; write back into the model the bridge was built from"
                )
            cast = new.astype(original.dtype)
            if cast.tobytes() == original.tobytes():
                continue
            replacement = numpy_helper.from_array(cast, tensor.name)
            replacement.doc_string = tensor.doc_string
            tensor.CopyFrom(replacement)
        missing = set(values) - seen
        if missing:
            raise ModelError(f"initializer {sorted(missing)[0]!r} is missing from the model written back into")
        return out


def _as_input(x: Tensor | np.ndarray) -> Tensor:
    t = torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x
    return t.float() if t.is_floating_point() and t.dtype != torch.float32 else t


class _ChannelStats:
    """Exact per-channel mean/variance (axis 1) pooled over batches, in float64."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self._sum: dict[str, Tensor] = {}
        self._sq: dict[str, Tensor] = {}

    def add(self, name: str, t: Tensor) -> None:
        dims = [0] + list(range(2, t.dim()))
        d = t.detach().double()
        self.count[name] = self.count.get(name, 0) + t.numel() // t.shape[1]
        self._sum[name] = self._sum.get(name, 0) + d.sum(dims)
        self._sq[name] = self._sq.get(name, 0) + (d * d).sum(dims)

    def mean_var(self, name: str) -> tuple[Tensor, Tensor]:
        n = self.count[name]
        mean = self._sum[name] / n
        var = (self._sq[name] / n - mean * mean).clamp_min(0.0)
        return mean, var


def to_torch(model: onnx.ModelProto, bn_calibration: Iterable[Tensor | np.ndarray] | None = None) -> OnnxModule:
    """The bridge module for `model`; with `bn_calibration` batches, folded BatchNorms are
    re-inserted (see OnnxModule.reinsert_folded_bn)."""
    module = OnnxModule(model)
    if bn_calibration is not None:
        module.reinsert_folded_bn(bn_calibration)
    return module


def recalibrate_bn(model: onnx.ModelProto, x_batches: Iterable[Tensor | np.ndarray]) -> onnx.ModelProto:
    """Re-estimates the running statistics of the explicit BatchNormalization nodes on a few
    batches (after pruning the old statistics are stale). Each BN normalises with the batch's own
    statistics during the pass, as in training, and its running mean/variance become the exact
    statistics pooled over all batches. Returns a copy; a graph without BN comes back unchanged."""
    module = OnnxModule(model)
    bn_nodes = [n for n in module.nodes if n.op_type == "BatchNormalization"]
    if not bn_nodes:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    ctx = _RunContext(training=False, bn_sums={})
    module.eval()
    with torch.no_grad():
        for xb in x_batches:
            module._run(_as_input(xb), set(module.output_names), ctx)
    assert ctx.bn_sums is not None
    if not ctx.bn_sums:
        raise DataError("no batches to recalibrate BatchNorm on; pass at least one batch")
    with torch.no_grad():
        for n in bn_nodes:
            count, total, squares = ctx.bn_sums[n.name]
            mean = total / count
            var = (squares / count - mean * mean).clamp_min(0.0)
            for name, value in ((n.inputs[3], mean), (n.inputs[4], var)):
                if module._slots.get(name, _Slot("", "")).kind != "stat":
                    raise ModelError(f"BatchNormalization {n.name!r} has computed statistics; cannot recalibrate")
                module.initializer(name).copy_(value.float())
    return module.write_back(model)


def _constant_value(node: NodeInfo) -> np.ndarray:
    attrs = node.attrs
    if "value" in attrs:
        return np.asarray(attrs["value"])
    if "value_float" in attrs:
        return np.asarray(attrs["value_float"], np.float32)
    if "value_floats" in attrs:
        return np.asarray(attrs["value_floats"], np.float32)
    if "value_int" in attrs:
        return np.asarray(attrs["value_int"], np.int64)
    if "value_ints" in attrs:
        return np.asarray(attrs["value_ints"], np.int64)
    raise UnsupportedOpError(f"the PyTorch bridge does not support Constant {node.name!r} with {sorted(attrs)}")


# ---------------------------------------------------------------------------------------------
# Shared op helpers
# ---------------------------------------------------------------------------------------------


def _unsupported(node: NodeInfo, what: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"the PyTorch bridge does not support {node.op_type} {what} (node {node.name!r})")


def _ints(t: Any) -> list[int]:
    """An int list from an attribute list or a 0/1-D integer tensor."""
    if isinstance(t, Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _spatial_pads(node: NodeInfo, sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> list[int]:
    """ONNX pads [b1..bn, e1..en] after auto_pad resolution."""
    nd = len(sizes)
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(node.attr("pads", [0] * (2 * nd)))
        return pads if len(pads) == 2 * nd else [0] * (2 * nd)
    if auto == "VALID":
        return [0] * (2 * nd)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise _unsupported(node, f"auto_pad={auto}")
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small = total // 2
        begin = small if auto == "SAME_UPPER" else total - small
        begins.append(begin)
        ends.append(total - begin)
    return begins + ends


def _torch_pad_order(pads: Sequence[int], nd: int) -> list[int]:
    """ONNX [b1..bn, e1..en] for the last nd axes -> F.pad's (last axis first) pairs."""
    out: list[int] = []
    for i in reversed(range(nd)):
        out += [pads[i], pads[i + nd]]
    return out


def _broadcast_legacy(node: NodeInfo, a: Tensor, b: Tensor) -> Tensor:
    """Opset < 7 binary ops broadcast B starting at `axis` when broadcast=1."""
    if node.opset < 7 and node.attr("broadcast", 0) and "axis" in node.attrs and b.dim() < a.dim():
        axis = _axis(node.attr("axis"), a.dim())
        return b.reshape([1] * axis + list(b.shape) + [1] * (a.dim() - axis - b.dim()))
    return b


# ---------------------------------------------------------------------------------------------
# Op handlers: one small function per op family
# ---------------------------------------------------------------------------------------------


@_op("Conv")
def _conv(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    nd = w.dim() - 2
    if nd not in (1, 2, 3):
        raise _unsupported(node, f"with {nd} spatial dims")
    strides = list(node.attr("strides", [1] * nd))
    dilations = list(node.attr("dilations", [1] * nd))
    pads = _spatial_pads(node, x.shape[2:], w.shape[2:], strides, dilations)
    if pads[:nd] == pads[nd:]:
        padding = pads[:nd]
    else:  # asymmetric: torch only pads symmetrically, so pad explicitly first
        x = F.pad(x, _torch_pad_order(pads, nd))
        padding = [0] * nd
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return [conv(x, w, b, strides, padding, dilations, node.attr("group", 1))]


@_op("Gemm")
def _gemm(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    if node.attr("transA", 0):
        a = a.t()
    if node.attr("transB", 0):
        b = b.t()
    y = a @ b
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return [y]


@_op("MatMul")
def _matmul(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    return [torch.matmul(args[0], args[1])]


def _int_div(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer Div truncates


_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _int_div,
    "Pow": torch.pow,
}


@_op(*_BINARY)
def _binary(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    a, b = args[0], args[1]
    return [_BINARY[node.op_type](a, _broadcast_legacy(node, a, b))]


_VARIADIC: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Sum": torch.add,
    "Max": torch.maximum,
    "Min": torch.minimum,
}


@_op(*_VARIADIC)
def _variadic(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    fn = _VARIADIC[node.op_type]
    y = args[0]
    for t in args[1:]:
        y = fn(y, t)
    return [y]


_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Identity": lambda x: x,
    "Sqrt": torch.sqrt,
    "Exp": torch.exp,
    "Log": torch.log,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Reciprocal": torch.reciprocal,
    "Erf": torch.erf,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
}


@_op(*_UNARY)
def _unary(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    return [_UNARY[node.op_type](args[0])]


@_op("LeakyRelu")
def _leaky_relu(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    return [F.leaky_relu(args[0], node.attr("alpha", 0.01))]


@_op("PRelu")
def _prelu(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x, slope = args
    return [torch.where(x >= 0, x, x * slope)]  # numpy-style broadcast of the slope, as ONNX says


@_op("Elu")
def _elu(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    return [F.elu(args[0], node.attr("alpha", 1.0))]


@_op("HardSigmoid")
def _hard_sigmoid(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    return [torch.clamp(args[0] * node.attr("alpha", 0.2) + node.attr("beta", 0.5), 0.0, 1.0)]


@_op("HardSwish")
def _hard_swish(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    return [F.hardswish(args[0])]


@_op("Clip")
def _clip(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x = args[0]
    if node.opset < 11:  # bounds are attributes before opset 11
        lo, hi = node.attr("min"), node.attr("max")
    else:
        lo = args[1] if len(args) > 1 else None
        hi = args[2] if len(args) > 2 else None
    if lo is None and hi is None:
        return [x]
    return [torch.clamp(x, min=lo, max=hi)]


@_op("Softmax", "LogSoftmax")
def _softmax(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x = args[0]
    fn = torch.softmax if node.op_type == "Softmax" else torch.log_softmax
    if node.opset >= 13:
        return [fn(x, dim=node.attr("axis", -1))]
    # Before opset 13 the input is coerced to 2-D at `axis` and normalised over the second part.
    axis = _axis(node.attr("axis", 1), x.dim())
    shape = x.shape
    flat = x.reshape(math.prod(shape[:axis]), math.prod(shape[axis:]))
    return [fn(flat, dim=1).reshape(shape)]


@_op("BatchNormalization")
def _batch_norm(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x, scale, bias, mean, var = args[:5]
    if node.attr("spatial", 1) != 1:
        raise _unsupported(node, "with spatial=0")
    eps = node.attr("epsilon", 1e-5)
    if ctx.bn_sums is not None:
        # Recalibration: normalise with the batch's statistics and pool exact sums.
        dims = [0] + list(range(2, x.dim()))
        d = x.detach().double()
        acc = ctx.bn_sums.setdefault(node.name, [0, 0.0, 0.0])
        acc[0] += x.numel() // x.shape[1]
        acc[1] = acc[1] + d.sum(dims)
        acc[2] = acc[2] + (d * d).sum(dims)
        return [F.batch_norm(x, None, None, scale, bias, training=True, eps=eps)]
    # ONNX momentum weighs the old running value; torch's weighs the new batch.
    momentum = 1.0 - node.attr("momentum", 0.9)
    return [F.batch_norm(x, mean, var, scale, bias, training=ctx.training, momentum=momentum, eps=eps)]


def _pool_geometry(
    node: NodeInfo, x: Tensor, dilated: bool
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(kernel, strides, dilations, onnx pads, extra end padding) so that a plain floor-mode torch
    pool over the explicitly padded input yields exactly ONNX's output size (ceil_mode included)."""
    kernel = list(node.attr("kernel_shape"))
    nd = len(kernel)
    strides = list(node.attr("strides", [1] * nd))
    dilations = list(node.attr("dilations", [1] * nd)) if dilated else [1] * nd
    sizes = list(x.shape[2:])
    pads = _spatial_pads(node, sizes, kernel, strides, dilations)
    ceil_mode = node.attr("ceil_mode", 0)
    extra = []
    for i in range(nd):
        span = sizes[i] + pads[i] + pads[i + nd]
        eff = (kernel[i] - 1) * dilations[i] + 1
        if ceil_mode:
            out = -(-(span - eff) // strides[i]) + 1
            if (out - 1) * strides[i] >= sizes[i] + pads[i]:
                out -= 1  # a window may not start in the right padding
        else:
            out = (span - eff) // strides[i] + 1
        extra.append(max(0, (out - 1) * strides[i] + eff - span))
    return kernel, strides, dilations, pads, extra


@_op("MaxPool")
def _max_pool(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x = args[0]
    if node.attr("storage_order", 0):
        raise _unsupported(node, "with storage_order=1")
    kernel, strides, dilations, pads, extra = _pool_geometry(node, x, dilated=True)
    nd = len(kernel)
    full = pads[:nd] + [p + e for p, e in zip(pads[nd:], extra)]
    if any(full):
        x = F.pad(x, _torch_pad_order(full, nd), value=float("-inf"))
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
    return [pool(x, kernel, strides, 0, dilations)]


@_op("AveragePool")
def _avg_pool(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x = args[0]
    if any(d != 1 for d in node.attr("dilations", [])):
        raise _unsupported(node, "with dilations")
    kernel, strides, _, pads, extra = _pool_geometry(node, x, dilated=False)
    nd = len(kernel)
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
    if not any(pads) and not any(extra):
        return [pool(x, kernel, strides)]
    # Divide window sums by the number of cells that count: real cells, plus the pads when
    # count_include_pad, never the extra cells that only exist to host ceil_mode windows.
    full = pads[:nd] + [p + e for p, e in zip(pads[nd:], extra)]
    order = _torch_pad_order(full, nd)
    summed = pool(F.pad(x, order), kernel, strides)
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype)
    if node.attr("count_include_pad", 0):
        ones = F.pad(ones, _torch_pad_order(pads, nd), value=1.0)
        ones = F.pad(ones, _torch_pad_order([0] * nd + extra, nd))
    else:
        ones = F.pad(ones, order)
    return [summed / pool(ones, kernel, strides)]


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x = args[0]
    dims = tuple(range(2, x.dim()))
    if node.op_type == "GlobalAveragePool":
        return [x.mean(dim=dims, keepdim=True)]
    return [x.amax(dim=dims, keepdim=True)]


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@_op("Pad")
def _pad(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x = args[0]
    rank = x.dim()
    mode = node.attr("mode", "constant")
    if node.opset < 11:  # pads (opset 1: "paddings") and value are attributes
        pads = list(node.attr("pads", node.attr("paddings", [])))
        value = float(node.attr("value", 0.0))
    else:
        pads = _ints(args[1])
        value_t = args[2] if len(args) > 2 else None
        value = float(value_t.reshape(-1)[0]) if value_t is not None and value_t.numel() else 0.0
        axes_t = args[3] if len(args) > 3 else None
        if axes_t is not None:  # opset 18: pads only for `axes`
            axes = [_axis(a, rank) for a in _ints(axes_t)]
            full = [0] * (2 * rank)
            for i, a in enumerate(axes):
                full[a], full[a + rank] = pads[i], pads[i + len(axes)]
            pads = full
    if mode not in _PAD_MODES:
        raise _unsupported(node, f"mode={mode}")
    order = _torch_pad_order(pads, rank)
    while order and order[-2:] == [0, 0]:  # drop untouched leading axes: F.pad takes trailing ones
        order = order[:-2]
    if not order:
        return [x]
    if mode == "constant":
        return [F.pad(x, order, value=value)]
    if len(order) // 2 > min(3, rank - 2):
        raise _unsupported(node, f"mode={mode} on the batch or channel axis")
    return [F.pad(x, order, mode=_PAD_MODES[mode])]


@_op("Concat")
def _concat(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    parts = [a for a in args if a is not None]
    return [torch.cat(parts, dim=_axis(node.attr("axis", 1), parts[0].dim()))]


@_op("Flatten")
def _flatten(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x = args[0]
    axis = _axis(node.attr("axis", 1), x.dim())
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@_op("Reshape")
def _reshape(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x = args[0]
    shape = list(node.attr("shape", [])) if node.opset < 5 else _ints(args[1])
    allow_zero = node.attr("allowzero", 0)
    # 0 copies the input's dim at that position (unless allowzero); -1 is inferred.
    new = [x.shape[i] if (s == 0 and not allow_zero) else s for i, s in enumerate(shape)]
    return [x.reshape(new)]


@_op("Transpose")
def _transpose(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x = args[0]
    perm = node.attr("perm", list(reversed(range(x.dim()))))
    return [x.permute(*perm)]


@_op("Squeeze")
def _squeeze(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x = args[0]
    if node.opset < 13:
        axes = node.attr("axes")
    else:
        axes = _ints(args[1]) if len(args) > 1 and args[1] is not None else None
    if axes is None:
        return [x.squeeze()]
    return [x.squeeze(tuple(_axis(a, x.dim()) for a in axes))]


@_op("Unsqueeze")
def _unsqueeze(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x = args[0]
    axes = list(node.attr("axes", [])) if node.opset < 13 else _ints(args[1])
    rank = x.dim() + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):  # axes index the output
        x = x.unsqueeze(a)
    return [x]


@_op("Dropout")
def _dropout(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    # Inference semantics always: students are fine-tuned as deployed, and KD targets are
    # deterministic. The optional mask output is all ones.
    x = args[0]
    return [x, torch.ones_like(x, dtype=torch.bool)]


@_op("Shape")
def _shape(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    dims = list(args[0].shape)
    start, end = node.attr("start", 0), node.attr("end", None)
    return [torch.tensor(dims[start:end], dtype=torch.int64)]


@_op("Gather")
def _gather(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    data, idx = args
    axis = _axis(node.attr("axis", 0), data.dim())
    idx = idx.long()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    picked = data.index_select(axis, idx.reshape(-1))
    return [picked.reshape(tuple(data.shape[:axis]) + tuple(idx.shape) + tuple(data.shape[axis + 1 :]))]


@_op("Cast")
def _cast(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    to = node.attr("to")
    if to not in _TORCH_DTYPES:
        raise _unsupported(node, f"to {onnx.TensorProto.DataType.Name(to)}")
    return [args[0].to(_TORCH_DTYPES[to])]


_REDUCE = {
    "ReduceMean": lambda x, d, k: x.mean(dim=d, keepdim=k),
    "ReduceSum": lambda x, d, k: x.sum(dim=d, keepdim=k),
    "ReduceMax": lambda x, d, k: x.amax(dim=d, keepdim=k),
    "ReduceMin": lambda x, d, k: x.amin(dim=d, keepdim=k),
}


@_op(*_REDUCE)
def _reduce(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x = args[0]
    if node.opset >= AXES_INPUT_SINCE[node.op_type]:
        axes = _ints(args[1]) if len(args) > 1 and args[1] is not None else None
    else:
        axes = node.attr("axes")
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.dim()))
    dims = tuple(_axis(a, x.dim()) for a in axes)
    return [_REDUCE[node.op_type](x, dims, bool(node.attr("keepdims", 1)))]


@_op("Split")
def _split(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x = args[0]
    axis = _axis(node.attr("axis", 0), x.dim())
    if node.opset < 13:
        sizes = node.attr("split")
    else:
        sizes = _ints(args[1]) if len(args) > 1 and args[1] is not None else None
    if not sizes:
        parts = node.attr("num_outputs", len(node.outputs))
        chunk = -(-x.shape[axis] // parts)  # opset 18: the last part may be smaller
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(parts)]
    return list(torch.split(x, list(sizes), dim=axis))


@_op("Slice")
def _slice(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x = args[0]
    if node.opset < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes, steps = node.attr("axes"), None
    else:
        starts, ends = _ints(args[1]), _ints(args[2])
        axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else None
        steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else None
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = list(steps) if steps is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(axis, x.dim())
        # Python's slice clamping is ONNX's, for both signs of step.
        idx = range(*slice(start, end, step).indices(x.shape[axis]))
        if step == 1:
            x = x.narrow(axis, idx.start, len(idx))
        else:
            x = x.index_select(axis, torch.tensor(list(idx), dtype=torch.int64))
    return [x]


@_op("ConstantOfShape")
def _constant_of_shape(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    value = node.attr("value")
    fill = _to_tensor(np.asarray(value).reshape(-1)) if value is not None else torch.zeros(1)
    return [fill.reshape(()).expand(_ints(args[0])).clone()]


@_op("Expand")
def _expand(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x = args[0]
    return [x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(args[1]))))]


def _nearest_index(node: NodeInfo, size: int, out: int, scale: float, mode: str, rounding: str) -> Tensor:
    """Source index per output position for nearest resizing, per ONNX's formulas."""
    i = np.arange(out, dtype=np.float64)
    if mode == "half_pixel":
        src = (i + 0.5) / scale - 0.5
    elif mode == "pytorch_half_pixel":
        src = (i + 0.5) / scale - 0.5 if out > 1 else np.zeros_like(i)
    elif mode == "align_corners":
        src = i * (size - 1) / (out - 1) if out > 1 else np.zeros_like(i)
    elif mode == "asymmetric":
        src = i / scale
    elif mode == "tf_half_pixel_for_nn":
        src = (i + 0.5) / scale
    elif mode == "half_pixel_symmetric":
        adjust = out / (scale * size)
        src = size / 2 * (1 - adjust) + (i + 0.5) / scale - 0.5
    else:
        raise _unsupported(node, f"coordinate_transformation_mode={mode}")
    if rounding == "round_prefer_floor":
        idx = np.ceil(src - 0.5)
    elif rounding == "round_prefer_ceil":
        idx = np.floor(src + 0.5)
    elif rounding == "floor":
        idx = np.floor(src)
    elif rounding == "ceil":
        idx = np.ceil(src)
    else:
        raise _unsupported(node, f"nearest_mode={rounding}")
    return torch.from_numpy(np.clip(idx, 0, size - 1).astype(np.int64))


@_op("Resize", "Upsample")
def _resize(node: NodeInfo, args: list[Any], ctx: _RunContext) -> list[Tensor]:
    x = args[0]
    mode = node.attr("mode", "nearest")
    if mode != "nearest":
        raise _unsupported(node, f"mode={mode} (only nearest)")
    if node.attr("antialias", 0) or node.attr("axes") is not None:
        raise _unsupported(node, "with antialias or axes")
    sizes_t = None
    if node.op_type == "Upsample":
        scales = node.attr("scales") if node.opset < 9 else args[1]
        coord, rounding = "asymmetric", "floor"  # Upsample is x_out / scale, floored
    elif node.opset < 11:
        scales = args[1]
        coord, rounding = "asymmetric", "floor"
    else:
        scales = args[2] if len(args) > 2 else None
        sizes_t = args[3] if len(args) > 3 else None
        coord = node.attr("coordinate_transformation_mode", "half_pixel")
        rounding = node.attr("nearest_mode", "round_prefer_floor")
        if coord == "tf_crop_and_resize":
            raise _unsupported(node, "coordinate_transformation_mode=tf_crop_and_resize")
    if sizes_t is not None and sizes_t.numel():
        outs = _ints(sizes_t)
        factors = [o / s for o, s in zip(outs, x.shape)]
    else:
        factors = [float(v) for v in (scales.reshape(-1).tolist() if isinstance(scales, Tensor) else scales)]
        outs = [int(math.floor(s * f)) for s, f in zip(x.shape, factors)]
    for axis, (size, out, f) in enumerate(zip(x.shape, outs, factors)):
        if out != size or f != 1.0:
            x = x.index_select(axis, _nearest_index(node, size, out, f, coord, rounding))
    return [x]
