"""`onnxcompress inspect`: what the compiler sees in a model, as the JSON contract of DESIGN.md and
as a readable table."""

from __future__ import annotations

from typing import Any

import onnx

from onnxcompress.compiler import binary_head
from onnxcompress.compiler.cost import model_cost, serialized_size
from onnxcompress.compiler.ir import Analysis, analyze
from onnxcompress.compiler.onnx_io import canonicalize, import_graph, is_quantized, opset_of
from onnxcompress.compiler.ops import LAYER_OPS


def _value_info(vi: onnx.ValueInfoProto) -> dict[str, Any]:
    tt = vi.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return {"name": vi.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else None}


def quantized_weights(model: onnx.ModelProto) -> dict[str, int]:
    """For a QDQ model: how many weight tensors are stored in each integer type ({"int8": 9})."""
    inits = {i.name: i for i in model.graph.initializer}
    weights = {n.input[1] for n in model.graph.node if n.op_type in LAYER_OPS and len(n.input) > 1}
    counts: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input and n.input[0] in inits and n.output[0] in weights:
            kind = onnx.helper.tensor_dtype_to_string(inits[n.input[0]].data_type).replace("TensorProto.", "").lower()
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def inspect_model(name: str, original: onnx.ModelProto, canonical: onnx.ModelProto | None = None,
                  consume: bool = False) -> tuple[dict[str, Any], Analysis]:
    """The `inspect --json` document for a model (costs of the canonical form, at batch 1; a QDQ
    model is read as it is: canonicalisation would fold its integer weights back to float).
    `consume`: the caller gives `original` up (it is canonicalised in place and dropped once its
    own facts are read), so that one copy of the weights is in memory during the analysis."""
    inits = {i.name for i in original.graph.initializer}
    quantized = is_quantized(original)
    head = {  # what the user's file says, read before it is canonicalised
        "opset": opset_of(original),
        "inputs": [_value_info(i) for i in original.graph.input if i.name not in inits],
        "outputs": [_value_info(o) for o in binary_head.restore_single_score(original).graph.output],  # as the user's file has them
        "size_bytes": serialized_size(original),
        "quantized_weights": quantized_weights(original) if quantized else None,
        "binary_head": binary_head.recorded(original),
    }
    if canonical is None:
        canonical = original if quantized else canonicalize(original, in_place=consume)
    original = None  # noqa: F841 - with `consume`, the last reference to the user's model
    graph = import_graph(canonical)
    analysis = analyze(graph)
    cost = model_cost(canonical, graph)
    doc = {
        "model": name,
        "opset": head["opset"],
        "inputs": head["inputs"],
        "outputs": head["outputs"],
        "macs": cost.macs,
        "params": cost.params,
        "size_bytes": head["size_bytes"],
        "layers": [l.to_json() for l in analysis.layers],
        "groups": [g.to_json() for g in analysis.groups],
        "removable": [u.to_json() for u in analysis.removable],
        "quantizable": list(analysis.quantizable),
        "frozen": [{"what": f.what, "reason": f.reason} for f in analysis.frozen],
        "quantized_weights": head["quantized_weights"],
        "binary_head": head["binary_head"],
    }
    return doc, analysis


def _short(name: str, width: int = 44) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def format_inspection(doc: dict[str, Any], analysis: Analysis) -> str:
    lines = [
        f"{doc['model']}  (opset {doc['opset']})",
        "  inputs:  " + ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in doc["inputs"]),
        "  outputs: " + ", ".join(f"{o['name']} {o['shape']} {o['dtype']}" for o in doc["outputs"]),
        f"  MACs {doc['macs']:,}   params {doc['params']:,}   size {doc['size_bytes']:,} bytes",
    ]
    if doc.get("binary_head") is not None:
        lines.append(f"  binary classifier with a single score ({doc['binary_head']}): compressed as two classes, logits [0, z]; "
                     "students keep the single score")
    if doc.get("quantized_weights") is not None:
        stored = ", ".join(f"{n} {kind}" for kind, n in doc["quantized_weights"].items()) or "none"
        lines.append(f"  quantized (QDQ): weights stored as {stored}; channel, layer and class passes need the float model")
    lines += [
        "",
        f"  {'layer':<45} {'op':<7} {'in':>5} {'out':>5} {'MACs':>13} {'params':>9}  group",
    ]
    for l in analysis.layers:
        lines.append(
            f"  {_short(l.name):<45} {l.op:<7} {l.in_channels:>5} {l.out_channels:>5} {l.macs:>13,} {l.params:>9,}  {l.out_group or '-'}"
        )
    lines += ["", f"  channel groups ({sum(g.prunable for g in analysis.groups)} prunable of {len(analysis.groups)}):"]
    for g in analysis.groups:
        state = ("prunable" + (" (to 0: no tensor is this group alone)" if g.min_keep == 0 else "")) if g.prunable else f"frozen: {g.reason}"
        lines.append(f"    {g.id:<5} {g.channels:>5} ch  {len(g.producers)} producer(s), {len(g.members)} members  {state}")
    lines += ["", f"  removable units ({len(analysis.removable)}):"]
    for u in analysis.removable:
        lines.append(f"    {u.id:<5} {u.kind:<15} {len(u.nodes)} nodes  {u.macs:>12,} MACs  at {_short(u.anchor)}")
    lines += ["", f"  quantizable ops: {len(analysis.quantizable)}"]
    qdq = doc.get("quantized_weights") is not None
    unknown = [f for f in analysis.frozen if not f.what.startswith("g") and not (qdq and ("QuantizeLinear" in f.reason or "DequantizeLinear" in f.reason))]
    if unknown:
        lines += ["", "  frozen by unknown ops:"] + [f"    {_short(f.what)}: {f.reason}" for f in unknown]
    return "\n".join(lines)
