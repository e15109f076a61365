"""Applies a plan: each pass rewrites a copy of the graph, then one shared cleanup + verify step
runs (onnx.checker, onnxruntime load and run, expected output shape). On failure the error names
the pass that broke the model and the passes that ran before it."""

from __future__ import annotations

import numpy as np
import onnx

from onnxcompress.compiler.ir import Analysis, analyze
from onnxcompress.compiler.onnx_io import export_graph, import_graph, is_quantized
from onnxcompress.compiler.runtime import make_session
from onnxcompress.compiler.errors import CompressError, PlanError, VerificationError
from onnxcompress.passes.plan import Plan
from onnxcompress.passes.registry import REGISTRY, PassContext, get_pass


def anchors_of(analysis: Analysis) -> dict[str, tuple]:
    """ids of groups and removable units -> what identifies them across rewrites: a group's
    (producer, part) anchors, a unit's anchor node."""
    out: dict[str, tuple] = {g.id: g.anchors for g in analysis.groups}
    out.update({u.id: (u.anchor,) for u in analysis.removable})
    return out


def _output_dims(model: onnx.ModelProto) -> list[tuple]:
    return [tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in o.type.tensor_type.shape.dim) for o in model.graph.output]


def _dummy_input(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 2 for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    return feeds


def verify(model: onnx.ModelProto, expect_outputs: list[tuple] | None, what: str) -> None:
    """checker + onnxruntime load + one run + output shape. Raises VerificationError(what)."""
    try:
        onnx.checker.check_model(model)
        session = make_session(model)
        outs = session.run(None, _dummy_input(model))
    except Exception as exc:
        raise VerificationError(f"{what} produced an invalid model: {str(exc).strip().splitlines()[0][:300]}") from None
    if expect_outputs is not None:
        for got, expected, out in zip(_output_dims(model), expect_outputs, outs):
            fixed = tuple(d for d in expected[1:])
            if tuple(got[1:]) != fixed or tuple(out.shape[1:]) != fixed:
                raise VerificationError(f"{what} changed the output shape from {expected} to {got}")


def apply_plan(model: onnx.ModelProto, plan: Plan, calibration: np.ndarray | None = None, seed: int = 0, check: bool = True) -> onnx.ModelProto:
    """Replays `plan` on a canonical model and returns the rewritten model (the input is never
    modified). Every id in the plan refers to the analysis of `model` itself."""
    ctx = PassContext(calibration=calibration, seed=seed, anchors=anchors_of(analyze(import_graph(model))))
    current = model
    done: list[str] = []
    for step in plan.steps:
        spec = get_pass(step.name)
        if spec.needs_float_weights and is_quantized(current):
            terminal = [n for n in done if get_pass(n).terminal]
            where = f"after {terminal[0]}" if terminal else "on a quantized (QDQ) model"
            last = " and ".join(sorted({n for n, s in REGISTRY.items() if s.terminal}))
            raise PlanError(f"pass '{step.name}' cannot run {where}: channel, layer and class rewrites need float weights; "
                            + (f"put {last} last in the plan" if done else f"start from the float model and put {last} last in the plan"))
        expect = None if spec.changes_outputs else _output_dims(current)
        graph = import_graph(current)
        try:
            graph = spec.run(graph, step.params, ctx)
            rewritten = export_graph(graph, template=current)
        except CompressError:
            raise
        except Exception as exc:
            before = f" after {', '.join(done)}" if done else ""
            raise VerificationError(f"pass '{step.name}'{before} failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}") from exc
        if check:
            before = f" (after {', '.join(done)})" if done else ""
            verify(rewritten, expect, f"pass '{step.name}'{before}")
        current = rewritten
        done.append(step.name)
    return current


def resolve(ctx: PassContext, analysis: Analysis, ident: str, kind: str):
    """The group ("g…") or removable unit ("b…") that `ident` named in the plan's input model."""
    anchor = ctx.anchors.get(ident)
    if kind == "group":
        if anchor is None:
            raise PlanError(f"unknown group id '{ident}' (see `onnxcompress inspect` for the groups)")
        for g in analysis.groups:
            if set(anchor) & set(g.anchors):
                return g
        raise PlanError(f"group '{ident}' no longer exists after the earlier passes of the plan")
    if anchor is None:
        raise PlanError(f"unknown removable block id '{ident}' (see `onnxcompress inspect` for removable units)")
    for u in analysis.removable:
        if u.anchor in anchor:
            return u
    raise PlanError(f"block '{ident}' no longer exists (removed or changed by an earlier pass of the plan)")
