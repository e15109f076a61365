"""onnxcompress.search: environment, agents (RL and baselines), rewards, evaluator, executors.

Running a search (what the CLI and the pipeline call)::

    from onnxcompress.search import ExecutorConfig, SearchConfig, Target, run_search

    result = run_search(
        teacher,                     # canonical onnx.ModelProto (compiler.onnx_io.canonicalize)
        val,                         # compiler.data.Dataset; labels optional (else agreement)
        calib,                       # float32 model inputs (or a Dataset) for the refit
        SearchConfig(agent="ddpg", episodes=64, seed=0,
                     targets=(Target.parse("macs=0.5"), Target(macs=0.25))),
        executor=ExecutorConfig(kind="local", workers=2),   # or kind="ray", ray_address=...
        checkpoint_dir="out/search",  # optional: resumable
        progress=True,
    )
    result.best[i].plan       # {"passes": [...]} for targets[i] (None if nothing fitted)
    result.best[i].metrics    # Metrics(accuracy, macs, params, size_bytes, latency_ms, ...)
    result.pareto             # Candidates on the accuracy / resource front
    result.to_json()          # for the report

Modules, one concern each: targets (budgets), metrics (Metrics, Cost, Budget), space (decisions
and exact cost of a teacher), latency (latency model), evaluator, executors, env, rewards,
pareto, checkpoint, driver; agents/ holds one module per agent, registered by name in
`onnxcompress.search.agents.AGENTS`.
"""

import importlib
from typing import Any

# imported on first use: `onnxcompress.search.targets` (the CLI's --target) must not pull in torch
# and the agents through this package
_API = {
    "SearchConfig": "onnxcompress.search.driver",
    "SearchResult": "onnxcompress.search.driver",
    "TargetResult": "onnxcompress.search.driver",
    "run_search": "onnxcompress.search.driver",
    "Evaluator": "onnxcompress.search.evaluator",
    "EvaluatorSpec": "onnxcompress.search.evaluator",
    "plan_key": "onnxcompress.search.evaluator",
    "ExecutorConfig": "onnxcompress.search.executors",
    "make_executor": "onnxcompress.search.executors",
    "Cost": "onnxcompress.search.metrics",
    "Metrics": "onnxcompress.search.metrics",
    "Target": "onnxcompress.search.targets",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'onnxcompress.search' has no attribute '{name}'")
