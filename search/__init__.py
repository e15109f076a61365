"""onnxcompress.search: environment, agents (RL and baselines), rewards, evaluator, executors.

The entry point is `run_search(teacher, val, calib, SearchConfig(...), executor=ExecutorConfig(...))`
-> SearchResult with the best plan per target (search/driver.py). Agents are registered by name
in `onnxcompress.search.agents.AGENTS`.
"""

from onnxcompress.search.driver import SearchConfig, SearchResult, TargetResult, run_search  # noqa: F401
from onnxcompress.search.evaluator import Evaluator, EvaluatorSpec, plan_key  # noqa: F401
from onnxcompress.search.executors import ExecutorConfig, make_executor  # noqa: F401
from onnxcompress.search.metrics import Cost, Metrics  # noqa: F401
from onnxcompress.search.targets import Target  # noqa: F401
