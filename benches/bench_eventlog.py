"""pytest-benchmark suite for EventLog (run: pytest benches/bench_eventlog.py)."""

from __future__ import annotations

import numpy as np

from fyp_core import EventLog, UserTokenizer, user_token

TOK = user_token(b"k" * 32, "bench-user")


def test_log_one_response(benchmark, tmp_path) -> None:
    """The caller-side cost of logging one 20-slot response (impressions + scores)."""
    log = EventLog(tmp_path)
    preds = np.random.default_rng(0).random((20, 5)).astype(np.float32)
    counter = iter(range(10**9))

    def one() -> int:
        rid = f"r{next(counter)}"
        ids = [f"{rid}:{s}" for s in range(20)]
        n = log.log_impressions(
            ids, rid, TOK, np.arange(20), np.arange(20), "ranked", 1.0, "m", 0, 0
        )
        return n + log.log_ranker_scores(ids, "m", preds[:, 0], preds, request_ids=rid)

    assert benchmark(one) == 40
    log.close()
    assert log.stats()["dropped"]["impressions"] == 0


def test_log_impressions_10k(benchmark, tmp_path) -> None:
    log = EventLog(tmp_path, queue_capacity=10**8)
    n = 10_000
    ids = [f"r{i // 20}:{i % 20}" for i in range(n)]
    reqs = [i.split(":")[0] for i in ids]
    items = np.arange(n, dtype=np.uint64)
    pos = np.arange(n) % 20
    out = benchmark(log.log_impressions, ids, reqs, TOK, items, pos, "ranked", 1.0, "m", 0, 0)
    assert out == n
    log.close()


def test_user_tokens_10k(benchmark) -> None:
    t = UserTokenizer(b"k" * 32)
    ids = [f"user-{i}" for i in range(10_000)]
    out = benchmark(t.tokens, ids)
    assert len(out) == 10_000 and len(out[0]) == 32
