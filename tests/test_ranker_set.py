"""RankerSet: live + shadows, promote/rollback, and consistency under concurrent requests."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fyp_core import MlpRanker, RankerSet


def constant(version: str, value: float, tasks: int = 2, d: int = 6) -> MlpRanker:
    """A model whose every prediction equals `value`: identifies its version in the output."""
    return MlpRanker(
        [np.zeros((d, tasks), np.float32)], [np.full(tasks, value, np.float32)], version=version
    )


X = np.ones((17, 6), np.float32)


def test_score_returns_live_and_every_shadow():
    s = RankerSet(constant("a", 1.0))
    s.add_shadow(constant("b", 2.0))
    s.add_shadow(constant("c", 3.0, tasks=4))
    r = s.score(X)
    assert r.live_version == "a" and r.live.shape == (17, 2) and (r.live == 1.0).all()
    assert sorted(r.shadows) == ["b", "c"]
    assert (r.shadows["b"] == 2.0).all() and r.shadows["c"].shape == (17, 4)
    rr = s.score_request(np.ones(2, np.float32), np.ones((5, 4), np.float32))
    assert rr.live.shape == (5, 2) and rr.shadows["c"].shape == (5, 4)
    assert s.score(np.zeros((0, 6), np.float32)).live.shape == (0, 2)
    assert s.shadow_versions == ["b", "c"] and s.live_version == "a"
    assert "RankerSet" in repr(s) and '"a"' in repr(r)


def test_promote_rollback_semantics():
    s = RankerSet(constant("a", 1.0))
    s.add_shadow(constant("b", 2.0))
    g0 = s.generation
    s.promote("b")
    assert s.live_version == "b" and s.shadow_versions == [] and s.history == ["a"]
    assert s.generation > g0
    assert (s.score(X).live == 2.0).all()
    assert s.rollback() == "a"
    assert s.live_version == "a" and s.shadow_versions == ["b"] and s.history == []
    s.promote("a")  # already live: no-op
    with pytest.raises(KeyError, match="no shadow with version .zz."):
        s.promote("zz")
    with pytest.raises(ValueError, match="nothing to roll back"):
        s.rollback()
    with pytest.raises(ValueError, match="already in the set"):
        s.add_shadow(constant("b", 5.0))
    with pytest.raises(ValueError, match="takes 7 inputs"):
        s.add_shadow(constant("w", 5.0, d=7))
    assert s.remove_shadow("b").version == "b" and s.shadow_versions == []
    with pytest.raises(KeyError):
        s.remove_shadow("b")
    with pytest.raises(ValueError, match="5 columns"):
        s.score(np.ones((2, 5), np.float32))


def test_promote_and_rollback_under_concurrent_load_never_mix_versions():
    values = {"a": 1.0, "b": 2.0, "c": 3.0}
    s = RankerSet(constant("a", 1.0))
    s.add_shadow(constant("b", 2.0))
    s.add_shadow(constant("c", 3.0))
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: set[str] = set()
    count = [0]

    def reader() -> None:
        try:
            while not stop.is_set():
                r = s.score(X)
                assert (r.live == values[r.live_version]).all()
                # a promoted model's predecessor waits in the rollback history, unscored
                assert r.live_version not in r.shadows and len(r.shadows) <= 2
                for v, p in r.shadows.items():
                    assert (p == values[v]).all()
                seen.add(r.live_version)
                count[0] += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(300):
        shadows = s.shadow_versions
        if shadows and i % 3 != 2:
            s.promote(shadows[i % len(shadows)])
        elif s.history:
            s.rollback()
    while s.history:
        s.rollback()
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert count[0] > 0 and s.live_version == "a"
