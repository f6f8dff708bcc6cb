"""Benchmarks are their own suite: `pytest benches` (pytest-benchmark). CI runs them once with
`--benchmark-disable`; the peer comparisons are scripts (`compare_*.py`, `--quick` in CI)."""
