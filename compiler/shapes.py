"""Shapes that onnx's static shape inference leaves unknown, resolved.

onnx.shape_inference cannot follow a shape computed at run time through every op: ShuffleNetV2's
channel shuffle reshapes with a target built from Shape -> Gather -> Div (integer division is not
propagated), and a `chunk` of the shuffled tensor then slices with computed bounds, after which
every dimension of every later tensor is unknown (47 of ShuffleNetV2's 57 convs counted 0 MACs).
The cost model and the channel analysis read shapes from the model's value_info, so they must be
complete. `resolve_shapes` completes them, cheapest first:

1. onnxruntime's symbolic shape inference (`SymbolicShapeInference`, sympy arithmetic on dims),
   which keeps the symbolic batch dimension;
2. else one onnxruntime run on zero inputs of the model's (pinned) input shape at batch 1 and
   batch 2, with every unresolved tensor exposed as an output: a dimension that differs between
   the two runs follows the batch and is written symbolically.

Models whose shapes static inference already resolves (nearly all) are returned untouched.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxcompress.compiler.tensors import serialized_tensor_size


def _batch_params(model: onnx.ModelProto) -> set[str]:
    """The symbolic batch dimension(s) of the graph inputs: the only dims that may stay symbolic."""
    inits = {i.name for i in model.graph.initializer}
    params = set()
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_param"):
            params.add(dims[0].dim_param)
    return params


def _resolved(vi: onnx.ValueInfoProto | None, batch: set[str]) -> bool:
    if vi is None or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return False
    return all(d.dim_value > 0 or (d.HasField("dim_param") and d.dim_param in batch) or (d.HasField("dim_value") and d.dim_value == 0)
               for d in vi.type.tensor_type.shape.dim)


def unresolved(model: onnx.ModelProto) -> list[str]:
    """Names of node outputs (tensors, in graph order) whose shape is not fully known: no value
    info, unknown rank, or a symbolic dimension other than the input's batch."""
    batch = _batch_params(model)
    known = {vi.name: vi for vi in [*model.graph.value_info, *model.graph.output]}
    out = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue  # a custom op: neither inference nor a plain onnxruntime knows it
        for name in node.output:
            if name and not _resolved(known.get(name), batch):
                out.append(name)
    return out


def _write(model: onnx.ModelProto, infos: dict[str, onnx.ValueInfoProto]) -> None:
    """Replaces (or adds) the value info of the named tensors; graph outputs are updated in place."""
    outputs = {o.name: o for o in model.graph.output}
    keep = [vi for vi in model.graph.value_info if vi.name not in infos or vi.name in outputs]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    for name, vi in infos.items():
        if name in outputs:
            outputs[name].type.CopyFrom(vi.type)
        else:
            model.graph.value_info.append(vi)


def _symbolic(model: onnx.ModelProto, names: list[str]) -> dict[str, onnx.ValueInfoProto]:
    """Shapes SymbolicShapeInference resolves, of the named tensors ({} when it fails)."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        # SymbolicShapeInference.infer_shapes, minus its failure path, which saves the model (all
        # its weights) as sym_shape_infer_temp.onnx in the working directory and raises: the
        # shapes it did resolve are kept, the rest come from a run
        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
        inference._preprocess(model)
        while inference.run_:
            inference._infer_impl()
        inference._update_output_from_vi()
        inferred = inference.out_mp_
    except Exception:  # noqa: BLE001 - an op it does not know, a sympy failure, another version: fall back to a run
        return {}
    batch = _batch_params(model)
    wanted = set(names)
    return {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output] if vi.name in wanted and _resolved(vi, batch)}


def _feeds(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray] | None:
    """Zero inputs at the given batch size; None when an input has another unknown dimension."""
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = []
        for k, d in enumerate(tt.shape.dim):
            if d.dim_value > 0:
                shape.append(d.dim_value)
            elif k == 0:
                shape.append(batch)
            else:
                return None
        feeds[vi.name] = np.zeros(shape, dtype=helper.tensor_dtype_to_np_dtype(tt.elem_type))
    return feeds


def _measured(model: onnx.ModelProto, names: list[str]) -> dict[str, onnx.ValueInfoProto]:
    """Shapes of the named tensors from onnxruntime runs at batch 1 and 2 ({} when the model
    cannot run on zero inputs)."""
    from onnxcompress.compiler.runtime import make_session

    one, two = _feeds(model, 1), _feeds(model, 2)
    if one is None or two is None:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in have)
    try:
        session = make_session(probe, optimize=False)
        a = session.run(names, one)
        b = session.run(names, two)
    except Exception:  # noqa: BLE001 - shapes stay unknown; the costs say 0 for those layers
        return {}
    symbol = sorted(_batch_params(model))[0] if _batch_params(model) else "N"
    infos = {}
    for name, x1, x2 in zip(names, a, b):
        x1, x2 = np.asarray(x1), np.asarray(x2)
        if x1.ndim != x2.ndim:
            continue
        dims: list[int | str] = []
        for d1, d2 in zip(x1.shape, x2.shape):
            dims.append(int(d1) if d1 == d2 else (symbol if d1 == 1 and d2 == 2 else f"{d1}*{symbol}"))
        infos[name] = helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(x1.dtype), dims)
    return infos


def resolve_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the value info of the tensors static inference left unknown filled in (in
    place; the same object is returned). See the module docstring."""
    names = unresolved(model)
    if not names:
        return model
    found = _symbolic(weightless(model), names)
    missing = [n for n in names if n not in found]
    if missing:
        found.update(_measured(model, missing))
    _write(model, found)
    return model


def output_shape(model: onnx.ModelProto) -> list[int | None] | None:
    """The dims of the first graph output (None for a symbolic one, the batch included); when the
    model declares some non-batch dims symbolically (exporters do for flattened heads), they are
    inferred at the model's input size. None when even that leaves the rank unknown."""
    out = model.graph.output[0]

    def dims(vi: onnx.ValueInfoProto) -> list[int | None] | None:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]

    declared = dims(out)
    if declared is not None and None not in declared[1:]:
        return declared
    from onnxcompress.compiler.onnx_io import dynamic_batch

    probe = onnx.ModelProto()
    probe.CopyFrom(dynamic_batch(model))
    del probe.graph.value_info[:]
    try:
        inferred = resolve_shapes(onnx.shape_inference.infer_shapes(probe, data_prop=True))
    except Exception:  # noqa: BLE001 - an inconsistent model: the command reports it later, in its own words
        return declared
    found = next((o for o in inferred.graph.output if o.name == out.name), None)
    return dims(found) if found is not None else declared


WEIGHTLESS_MAX_BYTES = 4096  # initializers up to this size keep their values (shape tensors, small constants)


def weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` in which each large initializer is a graph input of the same name, type
    and shape instead. Shape inference and the checker need no more than that, and serialise the
    model they are given (and onnx's C++ side parses it again): on a 550 MB VGG-16 that was 2 GB of
    transient copies per call. Small initializers (Reshape targets and other constants that data
    propagation reads) stay."""
    graph = model.graph
    light = onnx.GraphProto(name=graph.name, doc_string=graph.doc_string)
    light.node.extend(graph.node)
    light.input.extend(graph.input)
    light.output.extend(graph.output)
    light.value_info.extend(graph.value_info)
    light.sparse_initializer.extend(graph.sparse_initializer)
    declared = {i.name for i in graph.input}
    for init in graph.initializer:
        if serialized_tensor_size(init) <= WEIGHTLESS_MAX_BYTES:  # ByteSize() would serialise the tensor
            light.initializer.append(init)
        elif init.name not in declared:
            light.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    out = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name, producer_version=model.producer_version,
                          domain=model.domain, model_version=model.model_version, doc_string=model.doc_string)
    out.opset_import.extend(model.opset_import)
    out.metadata_props.extend(model.metadata_props)
    out.functions.extend(model.functions)
    out.graph.CopyFrom(light)
    return out


def copy_shapes(source: onnx.ModelProto, dest: onnx.ModelProto) -> onnx.ModelProto:
    """`dest` (changed in place, returned) with the value info and graph output types of `source`
    (the same graph, e.g. its weightless copy after shape inference)."""
    del dest.graph.value_info[:]
    dest.graph.value_info.extend(source.graph.value_info)
    types = {o.name: o.type for o in source.graph.output}
    for o in dest.graph.output:
        if o.name in types:
            o.type.CopyFrom(types[o.name])
    return dest
