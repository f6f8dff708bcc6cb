"""pytest-benchmark suite for the feature parity report (run: pytest benches/bench_parity.py)."""

from __future__ import annotations

import numpy as np

from fyp_core import parity_report

N_ROWS, N_FEATURES = 100_000, 50


def test_parity_report_100k_rows_50_features(benchmark) -> None:
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(N_FEATURES)]
    train = rng.standard_normal((N_ROWS, N_FEATURES), dtype=np.float32)
    served = rng.standard_normal((N_ROWS, N_FEATURES), dtype=np.float32)
    served[:, 3] *= 3.0  # one skewed feature
    served[:, 10] = np.round(served[:, 10])  # ties
    report = benchmark(parity_report, (train, names), (served, names))
    assert report.flagged == ["f3", "f10"]
