"""Reranker API: policies from dicts and TOML, validation, bad input, relaxation reports, and
sharing one re-ranker between threads while its policy is swapped."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from rerank_reference import audit

import fyp_core
from fyp_core import Reranker, RerankPolicy

TOML = """
[feed.rerank]
window = 10
max_topic_share = 0.4
max_per_creator = 2
blocked_categories = [3]
fresh_floor = 1
diversity = "mmr"
mmr_lambda = 0.7

[feed.rerank.category_caps]
"7" = 0.2
"9" = { share = 0.1, safety = true }
"""


def candidates(n=300, seed=0, dim=16):
    rng = np.random.default_rng(seed)
    return dict(
        scores=rng.standard_normal(n).astype(np.float32),
        topics=rng.zipf(1.5, n).astype(np.uint64) % 8,
        creators=rng.integers(0, 40, n).astype(np.uint64),
        embeddings=rng.standard_normal((n, dim)).astype(np.float32),
        categories=rng.integers(0, 10, n).astype(np.uint64),
        is_fresh=rng.random(n) < 0.05,
    )


def test_exported_names():
    for name in ("Reranker", "RerankPolicy", "RerankResult", "dpp_greedy", "mmr_greedy"):
        assert name in fyp_core.__all__ and hasattr(fyp_core, name)


def test_default_policy_is_score_order():
    c = candidates()
    out = Reranker({}).rerank(c["scores"], c["topics"], c["creators"], 25)
    assert out.tolist() == np.argsort(-c["scores"], kind="stable")[:25].tolist()


def test_policy_from_toml_dict_and_kwargs_agree(tmp_path):
    from_text = RerankPolicy.from_toml(TOML, table="feed.rerank")
    path = tmp_path / "policy.toml"
    path.write_text(TOML)
    from_file = RerankPolicy.load(path, table="feed.rerank")
    d = from_text.to_dict()
    assert d == from_file.to_dict() == RerankPolicy(d).to_dict() == RerankPolicy(**d).to_dict()
    assert d["category_caps"] == {
        7: {"share": 0.2, "safety": False},
        9: {"share": 0.1, "safety": True},
    }
    assert RerankPolicy({"window": 5}, window=7).to_dict()["window"] == 7
    assert "RerankPolicy(" in repr(from_text)
    with pytest.raises(ValueError, match=r"no table \[feed.other\]"):
        RerankPolicy.from_toml(TOML, table="feed.other")
    with pytest.raises(OSError):
        RerankPolicy.load(tmp_path / "missing.toml")
    with pytest.raises(ValueError):  # tomllib.TOMLDecodeError is a ValueError
        RerankPolicy.from_toml("window = ")


@pytest.mark.parametrize(
    "policy, match",
    [
        ({"windw": 10}, "valid keys are: window, max_topic_share"),
        ({"window": 0}, "window must be in"),
        ({"window": -3}, "window must be >= 0"),
        ({"window": True}, "window must be an int"),
        ({"window": "20"}, "window must be an int"),
        ({"max_topic_share": 1.5}, "max_topic_share must be in"),
        ({"max_topic_share": 0.01}, "allows floor"),
        ({"max_per_creator": 0}, "max_per_creator must be >= 1"),
        ({"fresh_floor": 30}, "fresh_floor 30 exceeds window 20"),
        ({"diversity": "random"}, "diversity must be one of"),
        ({"mmr_lambda": -0.1}, "mmr_lambda"),
        ({"dpp_alpha": float("nan")}, "dpp_alpha"),
        ({"blocked_categories": "3"}, "blocked_categories"),
        ({"blocked_categories": [-1]}, "non-negative"),
        ({"category_caps": {"x": 0.1}}, "not an id"),
        ({"category_caps": {1: 1.5}}, r"category_caps\[1\] share"),
        ({"category_caps": {1: {"safety": True}}}, 'needs a "share"'),
        ({"category_caps": {1: {"share": 0.1, "safe": True}}}, "valid keys are share, safety"),
        ({"category_caps": {1: 0.1, "1": 0.2}}, "twice"),
    ],
)
def test_bad_policies(policy, match):
    with pytest.raises(ValueError, match=match):
        Reranker(policy)
    with pytest.raises(ValueError, match=match):
        RerankPolicy(policy)


def test_bad_inputs():
    c = candidates(10)
    rr = Reranker({"diversity": "dpp"})
    s, t, cr, e = c["scores"], c["topics"], c["creators"], c["embeddings"]
    with pytest.raises(ValueError, match="topics has 9 entries, scores has 10"):
        rr.rerank(s, t[:9], cr, 3, embeddings=e)
    with pytest.raises(ValueError, match="creators has 11"):
        rr.rerank(s, t, np.arange(11, dtype=np.uint64), 3, embeddings=e)
    with pytest.raises(ValueError, match="embeddings has 9 entries"):
        rr.rerank(s, t, cr, 3, embeddings=e[:9])
    for k in (0, -1):
        with pytest.raises(ValueError, match="k must be >= 1"):
            rr.rerank(s, t, cr, k, embeddings=e)
    bad = s.copy()
    bad[4] = np.nan
    with pytest.raises(ValueError, match=r"scores\[4\] is NaN"):
        rr.rerank(bad, t, cr, 3, embeddings=e)
    with pytest.raises(ValueError, match="needs embeddings"):
        rr.rerank(s, t, cr, 3)
    bad_e = e.copy()
    bad_e[2, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        rr.rerank(s, t, cr, 3, embeddings=bad_e)
    with pytest.raises(ValueError, match="categories must be given"):
        Reranker({"blocked_categories": [1]}).rerank(s, t, cr, 3)
    with pytest.raises(ValueError, match="is_fresh must be given"):
        Reranker({"fresh_floor": 2}).rerank(s, t, cr, 3)
    with pytest.raises(ValueError, match="non-negative"):
        Reranker({}).rerank(s, -np.ones(10, np.int64), cr, 3)
    with pytest.raises(TypeError):
        Reranker({}).rerank(["a"] * 10, t, cr, 3)


def test_infeasible_topic_share_is_relaxed_and_reported():
    n = 12
    scores = np.arange(n, dtype=np.float32)
    topics = np.zeros(n, np.uint64)
    topics[:2] = 1  # two low-scoring items of another topic
    creators = np.arange(n, dtype=np.uint64)
    res = Reranker({"window": 5, "max_topic_share": 0.4}).rerank_detailed(
        scores, topics, creators, 5
    )
    # Topic 0 may fill 2 of every 5 slots; both topic-1 items are used, then the rule gives way.
    assert res.indices.tolist() == [11, 10, 1, 0, 9]
    assert res.relaxed == {"max_topic_share": 1}
    assert res.shortfall == 0 and res.diversity_fallback is None


def test_safety_rules_never_relax_the_feed_gets_shorter():
    scores = np.array([5, 4, 3, 2, 1], np.float32)
    ids = np.arange(5, dtype=np.uint64)
    cats = np.array([9, 9, 9, 1, 9], np.uint64)
    rr = Reranker(
        {
            "window": 10,
            "blocked_categories": [1],
            "category_caps": {9: {"share": 0.2, "safety": True}},
        }
    )
    res = rr.rerank_detailed(scores, ids, ids, 5, categories=cats)
    assert res.indices.tolist() == [0, 1] and res.shortfall == 3 and res.relaxed == {}
    # The same cap without safety relaxes instead.
    rr.set_policy({"window": 10, "blocked_categories": [1], "category_caps": {9: 0.2}})
    res = rr.rerank_detailed(scores, ids, ids, 5, categories=cats)
    assert res.indices.tolist() == [0, 1, 2, 4] and res.relaxed == {"category_caps": 2}


def test_fresh_floor_fills_the_end_of_the_first_window():
    scores = np.array([9, 8, 7, 6, 5, 1, 0.5], np.float32)
    ids = np.arange(7, dtype=np.uint64)
    fresh = np.array([0, 0, 0, 0, 0, 1, 1], bool)
    rr = Reranker({"window": 4, "fresh_floor": 2})
    assert rr.rerank(scores, ids, ids, 7, is_fresh=fresh).tolist() == [0, 1, 5, 6, 2, 3, 4]
    # Integer 0/1 flags are accepted too; too few fresh candidates is reported.
    res = Reranker({"window": 4, "fresh_floor": 3}).rerank_detailed(
        scores, ids, ids, 7, is_fresh=fresh.astype(np.int8)
    )
    assert res.relaxed == {"fresh_floor": 1}


def test_full_policy_audit_on_a_realistic_request():
    c = candidates(1000, seed=5, dim=64)
    policy = RerankPolicy.from_toml(TOML, table="feed.rerank").to_dict()
    for div in ("none", "mmr", "dpp"):
        policy["diversity"] = div
        res = Reranker(policy).rerank_detailed(k=50, **c)
        assert len(res) == 50
        assert res.relaxed == audit(
            policy, c["topics"], c["creators"], c["categories"], c["is_fresh"], res.indices
        )


def test_threads_share_one_reranker_while_the_policy_is_swapped():
    c = candidates(1000, seed=7, dim=32)
    a = {"window": 20, "max_topic_share": 0.4, "diversity": "dpp"}
    b = {"window": 10, "max_per_creator": 1, "diversity": "mmr"}
    expected = {Reranker(p).rerank(k=40, **c).tobytes(): name for name, p in (("a", a), ("b", b))}
    assert len(expected) == 2
    rr = Reranker(a)
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def serve():
        try:
            for _ in range(40):
                out = rr.rerank(k=40, **c).tobytes()
                assert out in expected, "a request saw a mix of two policies"
                seen.append(expected[out])
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    def swap():
        i = 0
        while not stop.is_set():
            rr.set_policy(b if i % 2 == 0 else RerankPolicy(a))
            i += 1

    threads = [threading.Thread(target=serve) for _ in range(4)]
    swapper = threading.Thread(target=swap)
    swapper.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    swapper.join()
    assert not errors, errors[0]
    assert len(seen) == 160


def test_policy_property_and_failed_swap_keeps_the_old_policy():
    rr = Reranker({"window": 7})
    with pytest.raises(ValueError):
        rr.set_policy({"window": 7, "fresh_floor": 9})
    assert rr.policy.to_dict()["window"] == 7
    assert rr.policy.to_dict()["fresh_floor"] == 0
    assert "Reranker(RerankPolicy(" in repr(rr)
