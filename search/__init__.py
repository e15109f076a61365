"""onnxcompress.search: environment, agents, rewards, evaluator and executors."""
