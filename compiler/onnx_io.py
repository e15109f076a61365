"""ONNX import and export: reading a user's model safely and bringing it into one canonical form.

Canonical form (what every other component may assume):
- main-domain opset >= 13 (older models are upgraded with onnx's version converter, so Clip, Pad,
  Squeeze, Softmax and per-channel QuantizeLinear have one meaning everywhere);
- float32 weights and I/O (fp16 models are widened exactly; the quantize pass can narrow again);
- constants folded into initializers (onnx-graphsurgeon's folder, which runs onnxruntime);
- no Identity or Dropout nodes;
- BatchNormalization folded into the preceding Conv where that Conv feeds only the BN; kept, with
  its parameters, elsewhere;
- Conv followed by an Add of a per-channel constant has that constant as its bias;
- MatMul(2-D input, constant weight) + Add(constant) is a Gemm (one fully connected layer kind);
- every node has a unique name; every non-scalar initializer has exactly one consumer node
  (so a pass that slices a weight never changes another layer);
- the batch dimension is symbolic (so one model serves batch 1 and batch 32).

Import and export hold no state. Export runs onnx's checker and shape inference.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper, shape_inference, version_converter

from onnxcompress.compiler.errors import CompressError, ModelError, ResourceError
from onnxcompress.compiler.ops import INFERENCE_NOOP_OPS, LAYER_OPS

CANONICAL_MIN_OPSET = 13
BATCH_DIM = "N"


# ----------------------------------------------------------------------------------------------
# Reading files safely
# ----------------------------------------------------------------------------------------------


def _check_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """External-data locations must stay inside the model's folder and exist."""
    root = folder.resolve()
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if location is None:
            raise ModelError(f"initializer '{tensor.name}' has external data without a location")
        target = (root / location).resolve()
        if root not in target.parents and target != root:
            raise ModelError(
                f"external data '{location}' of initializer '{tensor.name}' points outside the model's folder; refusing to read it"
            )
        if not target.is_file():
            raise ModelError(f"external data file '{location}' for initializer '{tensor.name}' is missing next to the model")


# a compression run holds several copies of the weights (original, canonical, candidates, sessions)
MEMORY_FACTOR = 8


def available_memory() -> int:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _check_memory(p: Path, model: onnx.ModelProto | None) -> None:
    """Refuses, before reading it, a model whose weights would not fit in memory several times."""
    total = p.stat().st_size
    if model is not None:
        for t in model.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                length = next((int(e.value) for e in t.external_data if e.key == "length"), None)
                total += length if length is not None else int(np.prod(t.dims)) * 4
    if total * MEMORY_FACTOR > available_memory():
        raise ResourceError(
            f"'{p}' holds {total / 2**20:.0f} MiB of weights; compressing it needs about {MEMORY_FACTOR}x that and only "
            f"{available_memory() / 2**20:.0f} MiB of memory is free"
        )


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Reads an ONNX file read-only and checks it. Every failure is a one-line ModelError."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file '{p}' does not exist")
    if p.is_dir():
        raise ModelError(f"'{p}' is a directory, not an ONNX model file")
    if p.stat().st_size == 0:
        raise ModelError(f"'{p}' is empty, not an ONNX model")
    _check_memory(p, None)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others for garbage or truncation
        raise ModelError(f"'{p}' is not a readable ONNX model ({type(exc).__name__}); is the file truncated or of another format?") from None
    if len(model.graph.node) == 0:
        raise ModelError(f"'{p}' is not an ONNX model with a graph (no nodes); is it another file format?")
    _check_external_data(model, p.parent)
    _check_memory(p, model)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        try:
            onnx.load_external_data_for_model(model, str(p.parent))
        except Exception as exc:
            raise ModelError(f"cannot read the external data of '{p}': {exc}") from None
    check(model, what=f"'{p}'")
    return model


def check(model: onnx.ModelProto, what: str = "the model") -> None:
    """onnx.checker with a one-line error. It checks a copy without the weights' values (it would
    serialise them, and its C++ side parse them again); validate_classifier reads every weight."""
    from onnxcompress.compiler.shapes import weightless

    try:
        onnx.checker.check_model(weightless(model))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnx.checker rejects {what}: {first}") from None


def publish_file(tmp: str, dest: Path) -> None:
    """Gives a finished temporary file the permissions a normal write would have (mkstemp makes
    it 0600) and renames it into place atomically."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, dest)


def save_model_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Writes to a temporary file in the destination folder, then renames it into place, so an
    interrupted write never leaves a partial model behind."""
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise ModelError(f"output folder '{folder}' does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(model.SerializeToString())
        publish_file(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


# ----------------------------------------------------------------------------------------------
# Canonicalisation
# ----------------------------------------------------------------------------------------------


def _widen_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 initializers and I/O become fp32 (exact); Cast-to-fp16 nodes become Cast-to-fp32."""
    changed = False
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT16:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
            changed = True
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        tt = vi.type.tensor_type
        if tt.elem_type == onnx.TensorProto.FLOAT16:
            tt.elem_type = onnx.TensorProto.FLOAT
            changed = True
    for node in model.graph.node:
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == onnx.TensorProto.FLOAT16:
                    a.i = onnx.TensorProto.FLOAT
                    changed = True
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT16:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
                    changed = True
    return model if not changed else model


def _upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    if opset_of(model) >= CANONICAL_MIN_OPSET:
        return model
    try:
        upgraded = version_converter.convert_version(model, CANONICAL_MIN_OPSET)
    except Exception as exc:
        raise ModelError(f"cannot upgrade the model from opset {opset_of(model)} to {CANONICAL_MIN_OPSET}: {str(exc).splitlines()[0]}") from None
    return upgraded


def _symbolic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """Makes dim 0 of the (single) input and of the outputs symbolic; a Reshape whose target shape
    hard-codes that fixed batch gets 0 ("copy the input's dim") there instead."""
    inits = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    fixed_batches = set()
    for vi in list(graph_inputs) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) > 0:
            if dims[0].HasField("dim_value"):
                fixed_batches.add(dims[0].dim_value)
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM
    if fixed_batches:
        init_by_name = {i.name: i for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in init_by_name:
                shape = numpy_helper.to_array(init_by_name[node.input[1]]).copy()
                if shape.size >= 2 and int(shape[0]) in fixed_batches and 0 not in shape:
                    shape[0] = 0
                    _allowzero_off(node)
                    init_by_name[node.input[1]].CopyFrom(numpy_helper.from_array(shape.astype(np.int64), node.input[1]))
    del model.graph.value_info[:]
    return model


def _allowzero_off(node: onnx.NodeProto) -> None:
    """A Reshape target we write 0 into means "copy the input's dim": drop allowzero=1 (opset 14+,
    set by PyTorch's dynamo exporter), under which 0 would be a literal zero. Only called where
    the target had no zero, so the original meaning is unchanged."""
    for a in node.attribute:
        if a.name == "allowzero":
            a.i = 0


def _reshape_zero_copies(graph: gs.Graph) -> None:
    """Reshapes with allowzero=1 and a constant target without zeros mean the same with
    allowzero=0, the form every rewrite assumes (a cut writes 0 for "copy the batch dim")."""
    for node in graph.nodes:
        if node.op == "Reshape" and node.attrs.get("allowzero", 0) == 1 and len(node.inputs) > 1:
            target = node.inputs[1]
            if isinstance(target, gs.Constant) and 0 not in np.asarray(target.values).reshape(-1).tolist():
                node.attrs["allowzero"] = 0


def num_classes(model: onnx.ModelProto) -> int | None:
    """The class count: dim 1 of the output, when fixed."""
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return int(dims[1].dim_value) if len(dims) >= 2 and dims[1].HasField("dim_value") else None


def is_quantized(model: onnx.ModelProto) -> bool:
    """True for a QDQ graph (what the quantize pass writes): its DequantizeLinear weights must not
    be constant-folded back to float, nor its values read from onnxruntime's fused integer kernels."""
    return any(n.op_type == "DequantizeLinear" for n in model.graph.node)


def dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` itself when its input's batch dimension is symbolic, else a copy with a symbolic
    batch (as in the canonical form; nothing else changes), so that it runs on any batch size:
    exporters often fix it to 1 (the ONNX zoo's SqueezeNet 1.1)."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not any(len(i.type.tensor_type.shape.dim) > 0 and i.type.tensor_type.shape.dim[0].HasField("dim_value") for i in inputs):
        return model
    return _symbolic_batch(onnx.ModelProto.FromString(model.SerializeToString()))


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx's shape inference, completed where it leaves shapes unknown (compiler/shapes.py: a
    Reshape whose target is computed at run time, as in ShuffleNetV2's channel shuffle), so that
    costs and the channel analysis see every shape at the analysed input size."""
    from onnxcompress.compiler.shapes import copy_shapes, resolve_shapes, weightless

    try:
        # on a copy without the weights (it serialises the model twice), shapes copied back
        inferred = shape_inference.infer_shapes(weightless(model), data_prop=True)
    except Exception as exc:
        raise ModelError(f"onnx shape inference fails on the model: {str(exc).splitlines()[0]}") from None
    return resolve_shapes(copy_shapes(inferred, model))


def _const(t: gs.Tensor) -> np.ndarray | None:
    return t.values if isinstance(t, gs.Constant) else None


def _bypass(graph: gs.Graph, node: gs.Node) -> None:
    """Removes a single-input pass-through node by rewiring its consumers to its input."""
    src, dst = node.inputs[0], node.outputs[0]
    if dst in graph.outputs:
        # keep the graph output name: make the producer write it directly when possible
        producer = src.inputs[0] if src.inputs else None
        if producer is not None and len(src.outputs) == 1 and src not in graph.outputs:
            producer.outputs[producer.outputs.index(src)] = dst
            node.outputs.clear()
            node.inputs.clear()
        return
    for consumer in list(dst.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is dst:
                consumer.inputs[i] = src
    node.outputs.clear()
    node.inputs.clear()


def _remove_identity_dropout(graph: gs.Graph) -> None:
    for node in list(graph.nodes):
        if node.op in INFERENCE_NOOP_OPS and node.inputs:
            # Dropout's optional mask output must be unused
            if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].outputs:
                continue
            while len(node.outputs) > 1:
                node.outputs.pop()
            _bypass(graph, node)


def _single_consumer(t: gs.Tensor, graph: gs.Graph) -> gs.Node | None:
    if len(t.outputs) == 1 and t not in graph.outputs:
        return t.outputs[0]
    return None


def _fold_batchnorm(graph: gs.Graph) -> None:
    for conv in list(graph.nodes):
        if conv.op != "Conv" or len(conv.outputs) != 1:
            continue
        bn = _single_consumer(conv.outputs[0], graph)
        if bn is None or bn.op != "BatchNormalization" or len(bn.outputs) != 1:
            continue
        w = _const(conv.inputs[1])
        params = [_const(t) for t in bn.inputs[1:5]]
        if w is None or any(p is None for p in params):
            continue
        scale, beta, mean, var = (p.astype(np.float64) for p in params)
        eps = float(bn.attrs.get("epsilon", 1e-5))
        factor = scale / np.sqrt(var + eps)
        bias = _const(conv.inputs[2]).astype(np.float64) if len(conv.inputs) > 2 else np.zeros(w.shape[0])
        new_w = (w.astype(np.float64) * factor.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        new_b = ((bias - mean) * factor + beta).astype(np.float32)
        conv.inputs[1] = gs.Constant(conv.inputs[1].name + "_bnfold", new_w)
        bias_name = (conv.inputs[2].name if len(conv.inputs) > 2 else conv.name + "_bias") + "_bnfold"
        bias_t = gs.Constant(bias_name, new_b)
        if len(conv.inputs) > 2:
            conv.inputs[2] = bias_t
        else:
            conv.inputs.append(bias_t)
        out = bn.outputs[0]
        bn.outputs.clear()
        bn.inputs.clear()
        conv.outputs[0] = out


def _per_channel_vector(c: np.ndarray, channels: int, rank: int, axis: int) -> np.ndarray | None:
    """The per-channel values of a constant that broadcasts along `axis` of a rank-`rank` tensor,
    or None when it does not have that form."""
    if c.ndim > rank:
        return None
    full = c.reshape((1,) * (rank - c.ndim) + c.shape)
    for ax, size in enumerate(full.shape):
        if ax != axis and size != 1:
            return None
    if full.shape[axis] == channels:
        return full.reshape(-1)
    if full.shape[axis] == 1:
        return np.full(channels, full.reshape(-1)[0], dtype=full.dtype)
    return None


def _fold_conv_add_bias(graph: gs.Graph) -> None:
    for conv in list(graph.nodes):
        if conv.op != "Conv" or len(conv.outputs) != 1:
            continue
        add = _single_consumer(conv.outputs[0], graph)
        if add is None or add.op != "Add" or len(add.inputs) != 2:
            continue
        other = add.inputs[1] if add.inputs[0] is conv.outputs[0] else add.inputs[0]
        w = _const(conv.inputs[1])
        c = _const(other)
        if w is None or c is None:
            continue
        vec = _per_channel_vector(c, w.shape[0], w.ndim, 1)
        if vec is None:
            continue
        bias = _const(conv.inputs[2]) if len(conv.inputs) > 2 else np.zeros(w.shape[0], np.float32)
        bias_t = gs.Constant((other.name or conv.name) + "_bias", (bias + vec).astype(np.float32))
        if len(conv.inputs) > 2:
            conv.inputs[2] = bias_t
        else:
            conv.inputs.append(bias_t)
        out = add.outputs[0]
        add.outputs.clear()
        add.inputs.clear()
        conv.outputs[0] = out


def _matmul_add_to_gemm(graph: gs.Graph) -> None:
    for mm in list(graph.nodes):
        if mm.op != "MatMul" or len(mm.outputs) != 1:
            continue
        x, w_t = mm.inputs
        w = _const(w_t)
        if w is None or w.ndim != 2 or x.shape is None or len(x.shape) != 2:
            continue
        add = _single_consumer(mm.outputs[0], graph)
        bias = None
        if add is not None and add.op == "Add" and len(add.inputs) == 2:
            other = add.inputs[1] if add.inputs[0] is mm.outputs[0] else add.inputs[0]
            c = _const(other)
            if c is not None and c.size in (w.shape[1],) and c.reshape(-1).shape[0] == w.shape[1] and c.ndim <= 2:
                if c.ndim < 2 or c.shape[0] == 1:
                    bias = gs.Constant(other.name + "_gemm_bias", c.reshape(-1).astype(np.float32))
        out = mm.outputs[0]
        inputs = [x, w_t] + ([bias] if bias is not None else [])
        if bias is not None:
            out = add.outputs[0]
            add.outputs.clear()
            add.inputs.clear()
        gemm = gs.Node(op="Gemm", name=mm.name, inputs=inputs, outputs=[out])
        mm.outputs.clear()
        mm.inputs.clear()
        graph.nodes.append(gemm)


def _unique_names(graph: gs.Graph) -> None:
    seen: set[str] = set()
    for i, node in enumerate(graph.nodes):
        name = node.name or f"{node.op}_{i}"
        base, k = name, 1
        while name in seen:
            name = f"{base}_{k}"
            k += 1
        node.name = name
        seen.add(name)


def _unshare_initializers(graph: gs.Graph) -> None:
    """A non-scalar constant used by several nodes gets a copy per extra consumer, so that slicing
    one layer's weight can never change another layer."""
    for tensor in list(graph.tensors().values()):
        # the shape, not the values: reading values loads a lazily imported weight into memory
        if not isinstance(tensor, gs.Constant) or int(np.prod(tensor.shape)) <= 1 or len(tensor.outputs) <= 1:
            continue
        for k, consumer in enumerate(list(tensor.outputs)[1:], start=1):
            copy = gs.Constant(f"{tensor.name}__{consumer.name}", np.array(tensor.values))
            for i, t in enumerate(consumer.inputs):
                if t is tensor:
                    consumer.inputs[i] = copy


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """ONNX model -> onnx-graphsurgeon graph (no canonicalisation)."""
    return gs.import_onnx(model)


EXPORT_STUB_MIN_BYTES = 4096


def _export_onnx(graph: gs.Graph) -> onnx.ModelProto:
    """gs.export_onnx with one copy of the weights instead of three: onnx-graphsurgeon builds a
    GraphProto (a copy of every weight) that onnx.helper.make_model copies once more into the
    model. Large constants are exported as empty stubs, and each then receives, in place, the
    TensorProto onnx-graphsurgeon itself makes of it (the same bytes)."""
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
    from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

    io = {t.name for t in graph.inputs + graph.outputs}
    big: dict[str, gs.Constant] = {}
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and t.name not in io and not isinstance(t._values, SparseValues):
            nbytes = t._values.nbytes if isinstance(t._values, (LazyValues, np.ndarray)) else 0
            if nbytes > EXPORT_STUB_MIN_BYTES:
                big[t.name] = t
    saved = {name: t._values for name, t in big.items()}
    try:
        for name, t in big.items():
            t._values = LazyValues(onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=[0]))
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        for name, t in big.items():
            t._values = saved[name]
    del saved
    for init in model.graph.initializer:
        t = big.get(init.name)
        if t is not None:
            init.CopyFrom(OnnxExporter.export_tensor_proto(t))
    return model


def export_graph(graph: gs.Graph, template: onnx.ModelProto | None = None, infer: bool = True) -> onnx.ModelProto:
    """onnx-graphsurgeon graph -> ONNX model with fresh shape information and the template's
    metadata (producer, metadata_props, extra opset domains)."""
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and t not in graph.inputs and t not in graph.outputs:
            t.shape = None  # stale after a rewrite; shape inference recomputes it
    model = _export_onnx(graph)
    if template is not None:
        # ir_version < 4 requires initializers listed as graph inputs; never go below 7; a pass
        # that raised the opset (int4 weights need opset 21, hence IR 10) raised graph.ir_version
        model.ir_version = max(template.ir_version, 7, int(graph.ir_version or 0))
        model.producer_name = "onnxcompress"
        del model.metadata_props[:]
        model.metadata_props.extend(template.metadata_props)
        have = {o.domain for o in model.opset_import}
        for o in template.opset_import:
            if o.domain not in have and o.domain not in ("", "ai.onnx"):
                model.opset_import.append(o)
    del model.graph.value_info[:]
    return _infer(model) if infer else model


def validate_classifier(model: onnx.ModelProto) -> None:
    """What onnxcompress handles: one image input with a fixed spatial size, one output, at
    least one Conv/Gemm/MatMul layer, finite weights. One clear ModelError otherwise."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); onnxcompress handles single-input classifiers")
    if len(model.graph.output) != 1:
        raise ModelError(f"the model has {len(model.graph.output)} outputs; onnxcompress handles single-output classifiers")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ModelError(f"input '{inputs[0].name}' has rank {len(dims)}; onnxcompress handles image classifiers with a 4-D input")
    if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims[1:]):
        raise ModelError(f"input '{inputs[0].name}' has a dynamic size {[d.dim_value or d.dim_param or '?' for d in dims]}; give its height and width (--input-size HxW, or input_size= in the onnxcompress API) or export it with a fixed size")
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(out_dims) >= 2 and all(d.HasField("dim_value") for d in out_dims[1:]) and int(np.prod([d.dim_value for d in out_dims[1:]])) == 1:
        # one score per sample (a sigmoid binary head): argmax, softmax KD and cross-entropy all
        # need one score per class, and would silently learn nothing from a single one
        raise ModelError("the model has a single output score per sample (a binary classifier with a sigmoid?); the compiler "
                         "needs one score per class: compiler.binary_head.two_class_view gives it two (the commands and the "
                         "onnxcompress API do this themselves)")
    if not any(n.op_type in LAYER_OPS for n in model.graph.node):
        raise ModelError("the model has no Conv, Gemm or MatMul layer: nothing to compress")
    for init in model.graph.initializer:
        try:
            values = numpy_helper.to_array(init)
        except Exception:
            raise ModelError(f"initializer '{init.name}' is damaged: its data does not match its shape {list(init.dims)} and type") from None
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            if not np.isfinite(values).all():
                raise ModelError(f"weight '{init.name}' contains NaN or Inf values; the model is damaged")


def canonicalize(model: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
    """The canonical form described in this module's docstring. Lossless: outputs are unchanged up
    to float rounding (checked by tests against onnxruntime on real data). `in_place`: the caller
    gives `model` up (it is changed, and must not be used afterwards), which spares a copy of
    every weight; once the caller drops it, only the canonical model holds them."""
    validate_classifier(model)
    try:
        return _canonicalize(model, in_place)
    except CompressError:
        raise
    except Exception as exc:  # a model the checker accepts but that is inconsistent inside
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ModelError(f"cannot import the model ({type(exc).__name__}: {first}); is it a valid CNN classifier?") from None


def _canonicalize(model: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
    template = onnx.ModelProto(ir_version=model.ir_version)  # what export_graph takes from the original
    template.opset_import.extend(model.opset_import)
    template.metadata_props.extend(model.metadata_props)
    if not in_place:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # never touch the caller's model
        model = copy
    model = _widen_fp16(model)
    model = _upgrade_opset(model)
    model = _symbolic_batch(model)
    model = _infer(model)
    graph = import_graph(model)
    from onnxcompress.compiler.runtime import quiet_onnxruntime

    quiet_onnxruntime()  # the folder runs onnxruntime sessions of its own
    try:
        graph.fold_constants(error_ok=True)
    except Exception:  # folding is an optimisation; a model it cannot fold is still valid
        pass
    graph.cleanup().toposort()
    _reshape_zero_copies(graph)
    _remove_identity_dropout(graph)
    graph.cleanup()
    _fold_batchnorm(graph)
    _fold_conv_add_bias(graph)
    graph.cleanup()
    _matmul_add_to_gemm(graph)
    graph.cleanup().toposort()
    _unique_names(graph)
    _unshare_initializers(graph)
    out = export_graph(graph, template)
    out.opset_import[0].CopyFrom(next(o for o in out.opset_import if o.domain in ("", "ai.onnx")))
    check(out, what="the canonicalised model")
    return out


def load_canonical(path: str | os.PathLike) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(original, canonical) for a model file."""
    original = load_model(path)
    return original, canonicalize(original)
