"""dpp_greedy against a brute-force greedy that maximises log det at each step (float64 numpy),
and mmr_greedy against a straightforward reference: same picks, same order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rerank_reference import brute_force_dpp, dpp_numpy, reference_mmr

from fyp_core import Reranker, dpp_greedy, mmr_greedy


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 14),
    dim=st.integers(2, 16),
    alpha=st.sampled_from([0.0, 0.5, 1.0, 4.0]),
    data=st.data(),
)
def test_dpp_matches_brute_force_log_det_greedy(seed, n, dim, alpha, data):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal(n).astype(np.float32)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    # Stay within the rank so that every pick has a clear, positive gain.
    k = data.draw(st.integers(1, min(n, dim)))
    got = dpp_greedy(scores, emb, k, alpha=alpha)
    assert got.dtype == np.int64
    assert got.tolist() == brute_force_dpp(scores, emb, k, alpha)


def test_dpp_stops_when_the_gain_falls_below_eps():
    # Five items in a 3-D space: after three picks no item adds volume.
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((5, 3)).astype(np.float32)
    got = dpp_greedy(np.zeros(5, np.float32), emb, 5)
    assert len(got) == 3
    # Exact duplicates are never picked twice; eps=-inf disables the stop.
    dup = np.tile(np.array([[0.3, 0.4]], np.float32), (4, 1))
    assert dpp_greedy(np.ones(4, np.float32), dup, 4).tolist() == [0]
    assert len(dpp_greedy(np.ones(4, np.float32), dup, 4, eps=-np.inf)) == 4


def test_dpp_eps_is_relative_to_the_best_quality():
    # Shifting every score by a constant scales L uniformly: same picks, same stopping point.
    rng = np.random.default_rng(2)
    scores = rng.standard_normal(40).astype(np.float32)
    emb = rng.standard_normal((40, 6)).astype(np.float32)
    a = dpp_greedy(scores, emb, 40, eps=1e-3)
    b = dpp_greedy(scores + np.float32(500), emb, 40, eps=1e-3)
    assert a.tolist() == b.tolist() and 0 < len(a) < 40


def test_dpp_huge_scores_do_not_overflow():
    emb = np.eye(3, dtype=np.float32)
    got = dpp_greedy(np.array([1e30, 1e30, -1e30], np.float32), emb, 3)
    assert got.tolist() == [0, 1]  # q of the last item underflows to 0: no gain


def test_dpp_at_scale_matches_a_numpy_chen_zhang_zhou():
    rng = np.random.default_rng(3)
    scores = rng.standard_normal(1000).astype(np.float32)
    emb = rng.standard_normal((1000, 64)).astype(np.float32)
    assert dpp_greedy(scores, emb, 50).tolist() == dpp_numpy(scores, emb, 50)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 30),
    dim=st.integers(1, 8),
    lam=st.sampled_from([0.0, 0.25, 0.5, 0.9, 1.0]),
    data=st.data(),
)
def test_mmr_matches_reference(seed, n, dim, lam, data):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal(n).astype(np.float32)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    k = data.draw(st.integers(1, n + 3))
    assert mmr_greedy(scores, emb, k, mmr_lambda=lam).tolist() == reference_mmr(scores, emb, k, lam)


def test_reranker_without_caps_is_the_plain_diversity_selection():
    rng = np.random.default_rng(4)
    n = 200
    scores = rng.standard_normal(n).astype(np.float32)
    emb = rng.standard_normal((n, 16)).astype(np.float32)
    ids = np.arange(n, dtype=np.uint64)
    mmr = Reranker({"diversity": "mmr", "mmr_lambda": 0.7})
    assert (
        mmr.rerank(scores, ids, ids, 30, embeddings=emb).tolist()
        == mmr_greedy(scores, emb, 30, 0.7).tolist()
    )
    dpp = Reranker({"diversity": "dpp", "dpp_alpha": 2.0})
    res = dpp.rerank_detailed(scores, ids, ids, 30, embeddings=emb)
    alone = dpp_greedy(scores, emb, 30, alpha=2.0)
    assert len(alone) == 16  # the rank of 16-d embeddings
    assert res.indices[:16].tolist() == alone.tolist()
    assert res.diversity_fallback == 16 and len(res) == 30
    # After the fallback the feed continues by score.
    rest = res.indices[16:]
    assert np.all(np.diff(scores[rest]) <= 0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: dpp_greedy([1.0, 2.0], np.ones((3, 2)), 1), "rows"),
        (lambda: dpp_greedy([1.0], np.ones((1, 2)), 0), "k must be >= 1"),
        (lambda: dpp_greedy([np.nan], np.ones((1, 2)), 1), "finite"),
        (lambda: dpp_greedy([1.0], [[np.inf, 0.0]], 1), "NaN or infinite"),
        (lambda: dpp_greedy([1.0], np.ones((1, 2)), 1, alpha=-1.0), "alpha must be finite"),
        (lambda: mmr_greedy([1.0], np.ones((1, 2)), 1, mmr_lambda=2.0), "mmr_lambda"),
        (lambda: mmr_greedy([1.0], np.ones((1, 2)), -3), "k must be >= 1"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
