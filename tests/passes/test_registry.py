"""Pass metadata on the registry: the manager and the pipeline decide how to run a pass from its
PassSpec, never from its name."""

from __future__ import annotations

from onnxcompress.passes import REGISTRY, Plan
from onnxcompress.pipeline import split_terminal


def test_each_pass_declares_what_the_manager_needs():
    assert {n: (s.changes_outputs, s.needs_float_weights, s.terminal) for n, s in REGISTRY.items()} == {
        "prune_channels": (False, True, False),
        "remove": (False, True, False),
        "subset_classes": (True, True, False),
        "quantize": (False, False, True),
    }


def test_the_pipeline_splits_a_plan_at_its_first_terminal_step():
    plan = Plan.from_json({"passes": [{"pass": "remove", "block": "b1"}, {"pass": "prune_channels", "ratio": 0.5},
                                      {"pass": "quantize", "bits": 8}, {"pass": "quantize", "node": "c", "bits": 4}]})
    head, tail = split_terminal(plan)
    assert [s.name for s in head.steps] == ["remove", "prune_channels"]
    assert [s.name for s in tail.steps] == ["quantize", "quantize"]
    head, tail = split_terminal(Plan.from_json({"passes": [{"pass": "prune_channels", "ratio": 0.5}]}))
    assert len(head.steps) == 1 and not tail.steps
