"""Latency model for latency-aware budgets: predicted batch-1 latency from MACs, fitted on
onnxruntime measurements of the teacher and a few uniformly pruned copies on this machine.

MACs do not predict latency perfectly (memory-bound layers, kernel choices), so the model is used
only to steer the environment's budget clamp; candidates are judged against a latency target on
their *measured* latency (the evaluator measures it when asked to).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx

from onnxcompress.compiler.cost import model_cost
from onnxcompress.compiler.runtime import measure_latency


@dataclass(frozen=True)
class LatencyModel:
    """latency_ms(batch 1) ~= intercept_ms + ms_per_mac * MACs (least squares, slope >= 0)."""

    intercept_ms: float
    ms_per_mac: float

    def predict(self, macs: int | float) -> float:
        return float(self.intercept_ms + self.ms_per_mac * float(macs))

    def to_json(self) -> dict[str, float]:
        return {"intercept_ms": self.intercept_ms, "ms_per_mac": self.ms_per_mac}

    @classmethod
    def from_json(cls, obj: dict) -> "LatencyModel":
        return cls(float(obj["intercept_ms"]), float(obj["ms_per_mac"]))

    @classmethod
    def fit(cls, macs: Sequence[float], latency_ms: Sequence[float]) -> "LatencyModel":
        x = np.asarray(macs, dtype=np.float64)
        y = np.asarray(latency_ms, dtype=np.float64)
        if len(x) < 2 or np.ptp(x) == 0:
            return cls(float(y.mean()) if len(y) else 0.0, 0.0)
        slope, intercept = np.polyfit(x, y, 1)
        if slope < 0:  # noise: fall back to a proportional model through the mean
            slope, intercept = float(y.mean() / x.mean()), 0.0
        return cls(float(intercept), float(slope))


def fit_latency_model(teacher: onnx.ModelProto, sample: np.ndarray, keep_fractions: Sequence[float] = (1.0, 0.75, 0.5, 0.3), repeats: int = 30) -> LatencyModel:
    """Measures the teacher and uniformly pruned copies (no reconstruction: latency does not depend
    on weight values) and fits the model."""
    from onnxcompress.passes import Plan, apply_plan

    macs, lat = [], []
    for f in keep_fractions:
        model = teacher if f >= 1.0 else apply_plan(teacher, Plan.from_json({"passes": [{"pass": "prune_channels", "ratio": 1.0 - f, "reconstruct": False}]}))
        macs.append(model_cost(model).macs)
        lat.append(measure_latency(model, sample, repeats=repeats).batch1)
    return LatencyModel.fit(macs, lat)
