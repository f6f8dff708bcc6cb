"""pytest-benchmark suite for the ranker's Python surface (256-512-256-128-6, one thread).
CI runs it once with --benchmark-disable; peers are in compare_ranker.py."""

from __future__ import annotations

import numpy as np
import pytest

from fyp_core import MlpRanker, RankerSet, assemble_features

DIMS = [256, 512, 256, 128, 6]


@pytest.fixture(scope="module")
def ranker() -> MlpRanker:
    rng = np.random.default_rng(0)
    ws = [
        (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
        for a, b in zip(DIMS, DIMS[1:])
    ]
    bs = [np.zeros(b, np.float32) for b in DIMS[1:]]
    return MlpRanker(ws, bs, outputs=["sigmoid"] * 6, version="bench")


@pytest.mark.parametrize("n", [200, 1000])
def test_predict(benchmark, ranker, n):
    x = np.random.default_rng(n).standard_normal((n, 256)).astype(np.float32)
    out = benchmark(ranker.predict, x)
    assert out.shape == (n, 6)


def test_predict_request_1000(benchmark, ranker):
    rng = np.random.default_rng(1)
    user = rng.standard_normal(128).astype(np.float32)
    items = rng.standard_normal((1000, 128)).astype(np.float32)
    out = benchmark(ranker.predict_request, user, items)
    assert out.shape == (1000, 6)


def test_assemble_features_1000(benchmark):
    rng = np.random.default_rng(2)
    user = rng.standard_normal(128).astype(np.float32)
    table = rng.standard_normal((100_000, 126)).astype(np.float32)
    rows = rng.integers(0, 100_000, size=1000)
    out = benchmark(assemble_features, user, table, rows, [(0, 0, 64), (64, 64, 62)])
    assert out.shape == (1000, 128)


def test_set_score_request_with_one_shadow(benchmark, ranker):
    s = RankerSet(ranker)
    s.add_shadow(
        MlpRanker(ranker.weights(), ranker.biases(), outputs=ranker.outputs, version="shadow")
    )
    rng = np.random.default_rng(3)
    user = rng.standard_normal(128).astype(np.float32)
    items = rng.standard_normal((1000, 128)).astype(np.float32)
    r = benchmark(s.score_request, user, items)
    assert r.live.shape == (1000, 6) and set(r.shadows) == {"shadow"}
