"""Small pieces of compiler/pipeline.py (the end-to-end runs are in tests/cli)."""

from __future__ import annotations

from onnxcompress.compiler.pipeline import accuracy_drop


def test_accuracy_drop_equal_to_the_budget_meets_it():
    assert accuracy_drop(0.789, 0.774) <= 1.5  # 100 * (0.789 - 0.774) is 1.5000000000000013 in floats
    assert accuracy_drop(0.789, 0.7739) > 1.5
    assert accuracy_drop(0.5, 0.6) == -10.0
