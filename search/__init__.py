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

from onnxcompress.search.driver import SearchConfig, SearchResult, TargetResult, run_search  # noqa: F401
from onnxcompress.search.evaluator import Evaluator, EvaluatorSpec, plan_key  # noqa: F401
from onnxcompress.search.executors import ExecutorConfig, make_executor  # noqa: F401
from onnxcompress.search.metrics import Cost, Metrics  # noqa: F401
from onnxcompress.search.targets import Target  # noqa: F401
