"""pytest-benchmark suite for TrafficSplit (run: pytest benches/bench_split.py)."""

from __future__ import annotations

import numpy as np

from fyp_core import TrafficSplit


def test_assign_batch_one_request(benchmark) -> None:
    split = TrafficSplit(0.05)
    slots = np.arange(20)
    out = benchmark(split.assign_batch, "user-token", "request-1", slots)
    assert out.shape == (20,)


def test_assign_batch_100k_broadcast(benchmark) -> None:
    split = TrafficSplit(0.05)
    slots = np.arange(100_000)
    out = benchmark(split.assign_batch, "user-token", "request-1", slots)
    assert 0.03 < out.mean() < 0.07
