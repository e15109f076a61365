"""The pass registry: name -> PassSpec. Filled once at import (each pass module registers itself
with `@register`), read-only afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import onnx_graphsurgeon as gs

from onnxcompress.compiler.errors import PlanError


class PassParams(Protocol):
    """Typed, frozen parameters of one pass call; parsed once from plan JSON."""

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "PassParams": ...

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PassContext:
    """What a pass may read besides its graph and params. Passes never read global state.

    calibration: preprocessed model inputs (a few hundred images) for data-driven passes.
    anchors: ids ("g3", "b2") -> the node names that identify them (a group's producers), as analysed on the plan's *input* model, so that ids
        in a plan keep meaning the same layers after earlier passes changed the graph.
    """

    calibration: np.ndarray | None = None
    seed: int = 0
    anchors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


PassFn = Callable[[gs.Graph, Any, PassContext], gs.Graph]


@dataclass(frozen=True)
class PassSpec:
    """A pass and what the manager and the pipeline need to know about it, so that neither
    names a pass to decide how to run it.

    changes_outputs: the pass changes the model's output shape (subset_classes), so the shared
        verify step does not hold it to the input's output shape.
    needs_float_weights: the pass reads float weights, so it cannot run on a quantized (QDQ)
        model: every structural pass; not quantize, which re-reads its own forms.
    terminal: the pass belongs at the end of a plan: the pipeline splits a plan at its first
        terminal step and applies that tail after fine-tuning, to the fine-tuned float student
        (quantize: the trainer works on float weights, and calibration reads the tuned ones).
    """

    name: str
    params: type
    run: PassFn
    changes_outputs: bool = False
    needs_float_weights: bool = True
    terminal: bool = False


_REGISTRY: dict[str, PassSpec] = {}
REGISTRY: Mapping[str, PassSpec] = MappingProxyType(_REGISTRY)


def register(
    name: str, params: type, *, changes_outputs: bool = False, needs_float_weights: bool = True, terminal: bool = False
) -> Callable[[PassFn], PassFn]:
    def deco(fn: PassFn) -> PassFn:
        if name in _REGISTRY:
            raise RuntimeError(f"pass '{name}' registered twice")
        _REGISTRY[name] = PassSpec(name, params, fn, changes_outputs, needs_float_weights, terminal)
        return fn

    return deco


def get_pass(name: str) -> PassSpec:
    spec = REGISTRY.get(name)
    if spec is None:
        raise PlanError(f"unknown pass '{name}'; known passes: {', '.join(sorted(REGISTRY))}")
    return spec
