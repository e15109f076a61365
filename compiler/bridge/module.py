"""`OnnxModule`: an ONNX graph as a torch module (parameters, buffers, the interpreter loop,
folded-BatchNorm re-insertion and the write-back into the very same graph), and the entry points
`to_torch` and `recalibrate_bn`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from onnxcompress.compiler.bridge.graph import consumers_of, derived_from_input, find_logits, is_trainable, safe_key, toposort
from onnxcompress.compiler.bridge.nodes import FLOAT_TYPES, HANDLERS, NodeInfo, RunContext, constant_value, default_opset, parse_attrs, to_tensor
from onnxcompress.compiler.data import data_input
from onnxcompress.compiler.errors import DataError, ModelError, UnsupportedOpError
from onnxcompress.compiler.ops import TRAINING_OUTPUTS

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
        opset = default_opset(model)
        self.input_name = data_input(model).name
        self.output_names = tuple(o.name for o in graph.output)
        if not self.output_names:
            raise ModelError("the model has no outputs")

        arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self._float_dtypes = {t.name: arrays[t.name].dtype for t in graph.initializer if t.data_type in FLOAT_TYPES}
        order = toposort(graph.node, set(arrays) | {self.input_name})
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
                    attrs=parse_attrs(n),
                    opset=opset,
                )
            )
        self._check_supported(nodes, {o.name for o in graph.output})

        # Constant nodes are evaluated once, here: they become constants like initializers.
        constants = {n.outputs[0]: constant_value(n) for n in nodes if n.op_type == "Constant"}
        self.nodes: tuple[NodeInfo, ...] = tuple(n for n in nodes if n.op_type != "Constant")
        self.all_nodes: tuple[NodeInfo, ...] = tuple(nodes)

        consumers = consumers_of(self.all_nodes)
        producers = {o: n for n in self.all_nodes for o in n.outputs if o}
        derived = derived_from_input(self.input_name, consumers)
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
            key = safe_key(name, taken)
            tensor = to_tensor(arr)
            if name in constants:
                kind = "const"
            elif name in self._float_dtypes and name in bn_stats:
                kind = "stat"
            elif name in self._float_dtypes and is_trainable(name, arr.size, consumers, producers, derived):
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
        self.logits_name, self.ends_in_softmax = find_logits(self.nodes, self.output_names[0])
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
            if n.domain not in ("", "ai.onnx") or n.op_type not in HANDLERS:
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
            env = self._run(_as_input(x), set(names), RunContext(training=False))
        finally:
            self.train(was_training)
        return {n: tuple(env[n].shape) for n in names if isinstance(env.get(n), Tensor)}

    # -- running ------------------------------------------------------------------------------

    def forward(self, x: Tensor, taps: Sequence[str] | None = None) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        wanted = set(self.output_names[:1]) | set(taps or ())
        env = self._run(x, wanted, RunContext(training=self.training))
        out = env[self.output_names[0]]
        if taps is None:
            return out
        return out, {n: env[n] for n in taps}

    def logits(self, x: Tensor, taps: Sequence[str] | None = None) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Logits (N, K): the Softmax input when the graph ends in a Softmax (the Softmax itself is
        not run), else the first output; flattened after the batch axis."""
        wanted = {self.logits_name} | set(taps or ())
        env = self._run(x, wanted, RunContext(training=self.training))
        z = env[self.logits_name].flatten(1)
        if taps is None:
            return z
        return z, {n: env[n] for n in taps}

    def _run(self, x: Tensor, wanted: set[str], ctx: RunContext) -> dict[str, Tensor]:
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
                results = HANDLERS[node.op_type](node, args, ctx)
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
        consumers = consumers_of(self.all_nodes)
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
                env = self._run(_as_input(xb), set(names), RunContext(training=False))
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
            key = safe_key(conv.name, taken)
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
    ctx = RunContext(training=False, bn_sums={})
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

