"""Benchmarks (not tests): every figure in BENCHMARKS.md comes from `python -m bench all`."""
