"""pytest-benchmark suite for the re-ranker (run: pytest benches/bench_rerank.py).

n=1000 candidates, k=50, 64-d embeddings, skewed topics: the DESIGN §6 re-rank stage."""

from __future__ import annotations

import numpy as np
import pytest

from fyp_core import Reranker, dpp_greedy, mmr_greedy

N, K, DIM = 1000, 50, 64
POLICY = {"window": 20, "max_topic_share": 0.4, "max_per_creator": 2}


@pytest.fixture(scope="module")
def request_data():
    rng = np.random.default_rng(0)
    return dict(
        scores=rng.standard_normal(N).astype(np.float32),
        topics=((rng.zipf(1.3, N) - 1) % 20).astype(np.uint64),
        creators=rng.integers(0, 300, N).astype(np.uint64),
        embeddings=rng.standard_normal((N, DIM)).astype(np.float32),
    )


def test_dpp_greedy(benchmark, request_data) -> None:
    d = request_data
    out = benchmark(dpp_greedy, d["scores"], d["embeddings"], K)
    assert len(out) == K


def test_mmr_greedy(benchmark, request_data) -> None:
    d = request_data
    out = benchmark(mmr_greedy, d["scores"], d["embeddings"], K)
    assert len(out) == K


@pytest.mark.parametrize("diversity", ["none", "mmr", "dpp"])
def test_rerank_caps(benchmark, request_data, diversity) -> None:
    rr = Reranker({**POLICY, "diversity": diversity})
    out = benchmark(rr.rerank, k=K, **request_data)
    assert len(out) == K


def test_rerank_full_policy(benchmark, request_data) -> None:
    n = len(request_data["scores"])
    rng = np.random.default_rng(1)
    extra = dict(categories=rng.integers(0, 10, n).astype(np.uint64), is_fresh=rng.random(n) < 0.05)
    rr = Reranker(
        {
            **POLICY,
            "blocked_categories": [3],
            "category_caps": {7: 0.2, 9: {"share": 0.1, "safety": True}},
            "fresh_floor": 2,
            "diversity": "dpp",
        }
    )
    out = benchmark(rr.rerank, k=K, **request_data, **extra)
    assert len(out) == K
