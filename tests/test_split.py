"""TrafficSplit: the DESIGN §3 spec, bit for bit against Python xxhash, and its statistics."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fyp_core import TrafficSplit


def ref_unit(salt: str, user: str, req: str, slot: int) -> float:
    key = f"{salt}\x1f{user}\x1f{req}\x1f{slot}".encode()
    return (xxhash.xxh3_64_intdigest(key, seed=0) >> 11) * 2.0**-53


def ref_bucket(salt: str, layer: str, user: str) -> int:
    key = f"{salt}\x1flayer\x1f{layer}\x1f{user}".encode()
    return xxhash.xxh3_64_intdigest(key, seed=0) % 10000


ALPHABET = "abcXYZ019-_ üéß中文🙂\u0000\x1f"


def random_keys(rng: np.random.Generator, n: int) -> tuple[list[str], list[str], np.ndarray]:
    chars = list(ALPHABET)

    def word(maxlen: int) -> str:
        return "".join(rng.choice(chars, size=rng.integers(0, maxlen + 1)))

    users = [word(12) for _ in range(n)]
    reqs = ["" if i % 7 == 0 else word(20) for i in range(n)]
    slots = rng.integers(-5, 10_000, size=n)
    return users, reqs, slots


def test_cross_language_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    n = 100_000
    users, reqs, slots = random_keys(rng, n)
    split = TrafficSplit(explore_rate=0.05, salt="fyp")
    want = np.array([ref_unit("fyp", u, r, int(s)) for u, r, s in zip(users, reqs, slots)])
    got_scalar = np.array(
        [split.unit(u, r, int(s)) for u, r, s in zip(users[:2000], reqs[:2000], slots[:2000])]
    )
    assert np.array_equal(got_scalar, want[:2000])
    got = split.assign_batch(users, reqs, slots)
    assert np.array_equal(got, want < 0.05)
    # numpy string arrays and tuples are accepted and agree
    got_np = split.assign_batch(np.array(users), tuple(reqs), slots.astype(np.int32))
    assert np.array_equal(got_np, got)


@given(st.text(), st.text(), st.integers(-(2**63), 2**63 - 1), st.text(min_size=1))
@settings(max_examples=300, deadline=None)
def test_unit_matches_reference_for_any_text(user: str, req: str, slot: int, salt: str) -> None:
    try:
        salt.encode()
        user.encode()
        req.encode()
    except UnicodeEncodeError:  # lone surrogates cannot be UTF-8: rejected by both sides
        return
    split = TrafficSplit(0.5, salt=salt)
    assert split.unit(user, req, slot) == ref_unit(salt, user, req, slot)
    assert split.bucket(req, user) == ref_bucket(salt, req, user)


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.5])
def test_exploration_share_within_4_sigma(rate: float) -> None:
    n = 1_000_000
    split = TrafficSplit(explore_rate=rate)
    users = [f"u{i // 20 % 5000}" for i in range(0, n, 20)]
    reqs = [f"r{i}" for i in range(n // 20)]
    got = split.assign_batch(
        np.repeat(users, 20), np.repeat(reqs, 20), np.tile(np.arange(20), n // 20)
    )
    share = got.mean()
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(share - rate) < 4 * sigma, (share, rate)


def test_buckets_uniform_sticky_and_independent_of_exploration() -> None:
    split = TrafficSplit(explore_rate=0.05)
    users = [f"user-{i}" for i in range(200_000)]
    buckets = np.array([split.bucket("ranker_v2", u) for u in users])
    assert buckets.min() >= 0 and buckets.max() < 10000
    counts = np.bincount(buckets // 100, minlength=100)  # 100 groups of 100 buckets
    assert stats.chisquare(counts).pvalue > 1e-4
    assert all(split.bucket("ranker_v2", u) == b for u, b in zip(users[:1000], buckets[:1000]))
    # independence: exploration share is the same in the lower and upper half of buckets
    explore = split.assign_batch(users, "req-1", 3)
    low, high = explore[buckets < 5000], explore[buckets >= 5000]
    table = [[low.sum(), (~low).sum()], [high.sum(), (~high).sum()]]
    assert stats.chi2_contingency(table).pvalue > 1e-4


def test_layers_never_change_exploration() -> None:
    n = 1_000_000
    slots = np.arange(n) % 20
    users = np.repeat(np.array([f"u{i}" for i in range(n // 20)]), 20)
    plain = TrafficSplit(0.05).assign_batch(users, "r", slots)
    for layers in (
        [{"name": "a", "variants": {"c": (0, 5000), "t": (5000, 10000)}}],
        {"a": {"c": (0, 100)}, "b": {"x": (0, 9999)}},
    ):
        assert np.array_equal(
            TrafficSplit(0.05, layers=layers).assign_batch(users, "r", slots), plain
        )


def test_variants() -> None:
    split = TrafficSplit(
        layers=[
            {"name": "exp", "variants": {"c": [0, 5000], "t": [5000, 10000]}},
            {"name": "small", "variants": {"on": [0, 10]}},
        ]
    )
    for u in (f"u{i}" for i in range(200)):
        b = split.bucket("exp", u)
        assert split.variant("exp", u) == ("c" if b < 5000 else "t")
        v = split.variants(u)
        assert set(v) == {"exp", "small"}
        assert v["small"] == ("on" if split.bucket("small", u) < 10 else None)
    assert split.layers["exp"] == {"c": (0, 5000), "t": (5000, 10000)}
    with pytest.raises(KeyError, match="unknown layer"):
        split.variant("nope", "u")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"explore_rate": float("nan")}, "explore_rate"),
        ({"explore_rate": -0.1}, "explore_rate"),
        ({"explore_rate": 1.01}, "explore_rate"),
        ({"salt": ""}, "salt"),
        ({"layers": [{"name": "", "variants": {"a": (0, 10)}}]}, "empty name"),
        ({"layers": [{"name": "l", "variants": {"a": (0, 6000), "b": (5000, 10000)}}]}, "overlap"),
        ({"layers": [{"name": "l", "variants": {"a": (0, 10001)}}]}, "10000"),
        ({"layers": [{"name": "l", "variants": {"a": (-1, 10)}}]}, "0 <= start"),
        ({"layers": [{"name": "l", "variants": {"a": (10, 10)}}]}, "start < end"),
        ({"layers": [{"name": "l", "variants": {}}]}, "no variants"),
        (
            {
                "layers": [
                    {"name": "l", "variants": {"a": (0, 1)}},
                    {"name": "l", "variants": {"a": (0, 1)}},
                ]
            },
            "more than once",
        ),
        ({"layers": [{"name": "l", "variants": {"a": (0, 1)}, "extra": 1}]}, "unknown layer key"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrafficSplit(**kwargs)


def test_bad_batch_input() -> None:
    split = TrafficSplit()
    with pytest.raises(ValueError, match="entries but the batch has"):
        split.assign_batch(["a", "b"], "r", [0, 1, 2])
    with pytest.raises(TypeError, match=r"user_tokens\[1\] must be str"):
        split.assign_batch(["a", 3], "r", [0, 1])
    with pytest.raises(TypeError, match="integers"):
        split.assign_batch("a", "r", [0.5, 1.5])
    with pytest.raises(TypeError):
        split.assign_batch(5, "r", [0])


def test_thread_safety_same_results() -> None:
    split = TrafficSplit(0.1)
    rng = np.random.default_rng(7)
    users, reqs, slots = random_keys(rng, 50_000)
    want = split.assign_batch(users, reqs, slots)
    results: list[np.ndarray] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(5):
            r = split.assign_batch(users, reqs, slots)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20
    assert all(np.array_equal(r, want) for r in results)
