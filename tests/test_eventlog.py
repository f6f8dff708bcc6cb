"""fyp_core.EventLog: what goes in comes out (read back with pyarrow and DuckDB), sampling keeps
whole requests and matches the documented hash, the files follow docs/eventlog_schema.md, bad
input raises clear exceptions, several Python threads can log at once."""

from __future__ import annotations

import glob
import json
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from fyp_core import EventLog, UserTokenizer, eventlog, user_token

KEY = b"k" * 32
TOK = user_token(KEY, "alice")
T0 = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z, in microseconds


def files(root, table):
    return sorted(glob.glob(os.path.join(root, table, "*", "*", "*.parquet")))


def read(root, table) -> pa.Table:
    fs = files(root, table)
    if not fs:
        return pa.table({})
    return pa.concat_tables([pq.read_table(f) for f in fs])


def keep_reference(request_id: str, pct: float) -> bool:
    """The documented sampling rule, from the spec alone."""
    if pct >= 100:
        return True
    h = xxhash.xxh3_64_intdigest(b"fyp.sample\x1f" + request_id.encode())
    return (h >> 11) * 2.0**-53 * 100 < pct


def impressions(log: EventLog, n_req: int, slots: int, explore_every: int = 0, ts=T0):
    ids, reqs, srcs = [], [], []
    for r in range(n_req):
        for s in range(slots):
            ids.append(f"req{r}:{s}")
            reqs.append(f"req{r}")
            srcs.append("exploration" if explore_every and s % explore_every == 0 else "ranked")
    n = len(ids)
    props = np.where(np.array(srcs) == "exploration", 0.01, 1.0)
    return log.log_impressions(
        ids,
        reqs,
        TOK,
        np.arange(n, dtype=np.uint64),
        np.arange(n) % slots,
        srcs,
        props,
        "m1",
        np.arange(n) % 7,
        np.arange(n) % 13,
        ts=ts,
    )


def _write_every_table(root: str, feats: list[str]) -> np.ndarray:
    """One small batch into each of the six tables; returns the logged predictions."""
    with EventLog(root, feature_names=feats) as log:
        assert impressions(log, 3, 4, explore_every=2) == 12
        log.log_engagements(
            ["req0:0", "req1:1"],
            TOK,
            watched_seconds=[3.5, 0.0],
            completed=[True, False],
            liked=True,
            ts=T0 + 5,
        )
        log.log_exploration(["req0:0", "req0:2"], TOK, [0, 2], [0, 2], [1, 2], 0.01, ts=T0)
        preds = np.arange(12 * 5, dtype=np.float32).reshape(12, 5) / 100
        log.log_ranker_scores(
            [f"req{i // 4}:{i % 4}" for i in range(12)],
            "m1",
            np.linspace(0, 1, 12),
            preds,
            is_shadow=False,
            ts=T0,
        )
        log.log_request("req0", TOK, [5, 6, 7], [0.5, 0.25, 0.125], [7, 5], ts=T0)
        log.log_served_features("req0", [5, 6], np.ones((2, 3)), "fs1", ts=T0)
    return preds


def _check_impressions_and_engagements(root: str) -> None:
    """Types and values of the impressions and engagements written above."""
    imp = read(root, "impressions").sort_by("impression_id")
    assert imp.num_rows == 12
    assert imp.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert imp.schema.field("item_id").type == pa.uint64()
    assert imp.schema.field("position").type == pa.int32()
    assert imp.column("experiments").to_pylist() == ["{}"] * 12
    assert set(imp.column("source").to_pylist()) == {"ranked", "exploration"}
    assert imp.column("sampled_pct").to_pylist() == [100.0] * 12
    eng = read(root, "engagements").sort_by("impression_id")
    assert eng.column("watched_seconds").to_pylist() == [3.5, 0.0]
    assert eng.column("completed").to_pylist() == [True, False]
    assert eng.column("liked").to_pylist() == [True, True]
    assert eng.column("shared").to_pylist() == [False, False]


def _check_scores_requests_features(root: str, preds: np.ndarray) -> None:
    """Columns, join key and values of ranker_scores, requests and served_features."""
    sc = read(root, "ranker_scores").sort_by("impression_id")
    assert sc.column_names == [
        "impression_id",
        "ts",
        "model_version",
        "is_shadow",
        "value_score",
        "pred_finish",
        "pred_like",
        "pred_share",
        "pred_follow",
        "pred_watch_seconds",
        "sampled_pct",
        "impression_key",
    ]
    # the integer join key: xxh3_64 of the id's UTF-8 bytes, next to the id (schema v2)
    assert sc.column("impression_key").to_pylist() == [
        xxhash.xxh3_64_intdigest(i.encode()) for i in sc.column("impression_id").to_pylist()
    ]
    got = np.stack(
        [
            sc.column(f"pred_{t}").to_numpy()
            for t in ["finish", "like", "share", "follow", "watch_seconds"]
        ],
        axis=1,
    )
    order = np.argsort([f"req{i // 4}:{i % 4}" for i in range(12)])
    np.testing.assert_array_equal(got, preds[order])
    req = read(root, "requests")
    assert req.column("candidate_item_ids").to_pylist() == [[5, 6, 7]]
    assert req.column("candidate_scores").to_pylist() == [[0.5, 0.25, 0.125]]
    assert req.column("served_item_ids").to_pylist() == [[7, 5]]
    sf = read(root, "served_features")
    assert sf.column("features").to_pylist() == [[1.0] * 3] * 2


def _check_files_and_metadata(root: str, feats: list[str]) -> None:
    """Partitions, file metadata, compression and declared schema of every table."""
    # partitions and metadata per docs/eventlog_schema.md
    for table in [
        "impressions",
        "engagements",
        "exploration_events",
        "ranker_scores",
        "requests",
        "served_features",
    ]:
        fs = files(root, table)
        assert fs, table
        for f in fs:
            assert "/dt=2023-11-14/hour=22/part-w0-" in f
            md = pq.ParquetFile(f).metadata
            kv = md.metadata
            assert kv[b"fyp.schema_version"] == b"2"
            assert kv[b"fyp.table"] == table.encode()
            assert md.row_group(0).column(0).compression == "ZSTD"
            # the files hold exactly the declared schema (fyp_core.eventlog)
            assert pq.read_schema(f).remove_metadata().equals(eventlog.schema(table)), table
    kv = pq.ParquetFile(files(root, "served_features")[0]).metadata.metadata
    assert json.loads(kv[b"fyp.feature_names"]) == feats


def test_round_trip_all_tables_schema_and_metadata(tmp_path):
    root = str(tmp_path)
    feats = ["f0", "f1", "f2"]
    preds = _write_every_table(root, feats)
    _check_impressions_and_engagements(root)
    _check_scores_requests_features(root, preds)
    _check_files_and_metadata(root, feats)
    # nothing left in the write-ahead directory after close
    assert not [f for f in os.listdir(os.path.join(root, "_wal", "w0")) if f.endswith(".log")]


def test_duckdb_reads_hive_partitions(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    root = str(tmp_path)
    with EventLog(root) as log:
        impressions(log, 10, 5, ts=T0)
        impressions(log, 10, 5, ts=T0 + 3_600_000_000)  # next hour
    q = f"""select dt, hour, count(*) from read_parquet('{root}/impressions/*/*/*.parquet',
            hive_partitioning = true) group by all order by hour"""
    rows = duckdb.sql(q).fetchall()
    assert [(str(d), h, c) for d, h, c in rows] == [("2023-11-14", 22, 50), ("2023-11-14", 23, 50)]


@pytest.mark.parametrize("pct", [100.0, 37.5, 5.0])
def test_sampling_is_per_request_and_matches_reference(tmp_path, pct):
    root = str(tmp_path)
    with EventLog(root, sample_pct=pct) as log:
        impressions(log, 400, 5, explore_every=5)
        for r in range(400):
            log.log_request(f"req{r}", TOK, [1, 2], [0.1, 0.2], [2], ts=T0)
        ids = [f"req{i // 5}:{i % 5}" for i in range(2000)]
        log.log_ranker_scores(
            ids,
            "m1",
            0.5,
            np.zeros((2000, 5)),
            exploration=[i % 5 == 0 for i in range(2000)],
            ts=T0,
        )
        st_ = log.stats()
    imp = read(root, "impressions")
    kept_ids = set(imp.column("impression_id").to_pylist())
    want = {
        f"req{r}:{s}"
        for r in range(400)
        for s in range(5)
        if s == 0 or keep_reference(f"req{r}", pct)
    }
    assert kept_ids == want
    # exploration rows are never sampled and carry 100; the rest carry the rate in force
    for src, p in zip(imp.column("source").to_pylist(), imp.column("sampled_pct").to_pylist()):
        assert p == (100.0 if src == "exploration" else pct)
    reqs = set(read(root, "requests").column("request_id").to_pylist())
    assert reqs == {f"req{r}" for r in range(400) if keep_reference(f"req{r}", pct)}
    scores = set(read(root, "ranker_scores").column("impression_id").to_pylist())
    assert scores == want, "a slot's scores are kept iff its impression is"
    assert st_["sampled_out"]["requests"] == 400 - len(reqs)
    if pct < 100:
        lo, hi = 400 * pct / 100 - 4 * (400 * pct / 100) ** 0.5, 400 * pct / 100 + 30
        assert lo <= len(reqs) <= hi


def test_rotation_by_rows_and_time(tmp_path):
    root = str(tmp_path)
    log = EventLog(root, rotate_rows=100, rotate_seconds=0.2)
    impressions(log, 50, 10)  # 500 rows -> 5 files of 100
    log.flush()
    assert len(files(root, "impressions")) == 5
    assert all(pq.ParquetFile(f).metadata.num_rows == 100 for f in files(root, "impressions"))
    impressions(log, 1, 3)
    # time rotation makes the 3 rows visible without flush()
    deadline = __import__("time").time() + 5
    while len(files(root, "impressions")) < 6 and __import__("time").time() < deadline:
        __import__("time").sleep(0.05)
    assert len(files(root, "impressions")) == 6
    log.close()
    assert log.stats()["written"]["impressions"] == 503


def test_stats_counters_and_properties(tmp_path):
    log = EventLog(tmp_path, sample_pct=50.0, writer_id="api_1", tasks=["finish", "like"])
    assert log.sample_pct == 50.0 and log.writer_id == "api_1" and log.tasks == ["finish", "like"]
    assert str(log.wal_path).endswith(os.path.join("_wal", "api_1"))
    assert not log.closed
    log.log_exploration(["r:0"], TOK, 1, 0, 0, 0.5)
    s = log.stats()
    assert s["enqueued"]["exploration_events"] == 1
    assert s["wal_bytes"] > 0
    log.close()
    s = log.stats()
    assert s["written"]["exploration_events"] == 1 and s["files_written"] == 1
    assert s["queue_depth"] == 0 and s["last_error"] is None
    assert log.closed
    log.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        log.log_exploration(["r:1"], TOK, 1, 0, 0, 0.5)


def test_generic_log_and_unknown_table(tmp_path):
    with EventLog(tmp_path) as log:
        assert (
            log.log(
                "exploration_events",
                impression_ids=["r:0"],
                user_tokens=TOK,
                item_ids=1,
                positions=0,
                topics=0,
                propensities=0.5,
            )
            == 1
        )
        with pytest.raises(ValueError, match='unknown table "clicks"'):
            log.log("clicks", impression_ids=["r:0"])


def test_bad_input_raises_clearly(tmp_path):
    with pytest.raises(ValueError, match="sample_pct"):
        EventLog(tmp_path / "a", sample_pct=0.0)
    with pytest.raises(ValueError, match="sample_pct"):
        EventLog(tmp_path / "a", sample_pct=150.0)
    with pytest.raises(ValueError, match="queue_capacity"):
        EventLog(tmp_path / "a", queue_capacity=0)
    with pytest.raises(ValueError, match="writer_id"):
        EventLog(tmp_path / "a", writer_id="../x")
    with pytest.raises(ValueError, match="duplicate"):
        EventLog(tmp_path / "a", tasks=["a", "a"])
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # running as root: permissions do not bind
            blocker = tmp_path / "file"
            blocker.write_text("x")
            with pytest.raises(OSError):
                EventLog(blocker / "sub")
        else:
            with pytest.raises(OSError, match="not writable"):
                EventLog(ro)
    finally:
        ro.chmod(0o700)
    log = EventLog(tmp_path / "b")
    with pytest.raises(ValueError, match="in use by another"):
        EventLog(tmp_path / "b")
    with pytest.raises(ValueError, match="has 2 values, the batch has 3"):
        log.log_impressions(["a:0", "a:1", "a:2"], "a", TOK, [1, 2], 0, "ranked", 1.0, "m", 0, 0)
    with pytest.raises(ValueError, match="source"):
        log.log_impressions(["a:0"], "a", TOK, 1, 0, "clicked", 1.0, "m", 0, 0)
    with pytest.raises(ValueError, match="propensity"):
        log.log_impressions(["a:0"], "a", TOK, 1, 0, "ranked", 0.0, "m", 0, 0)
    with pytest.raises(ValueError, match="raw user ids"):
        log.log_impressions(["a:0"], "a", "alice@example.com", 1, 0, "ranked", 1.0, "m", 0, 0)
    with pytest.raises(ValueError, match="non-negative"):
        log.log_impressions(["a:0"], "a", TOK, -1, 0, "ranked", 1.0, "m", 0, 0)
    with pytest.raises(TypeError, match="impression_ids"):
        log.log_impressions([1], "a", TOK, 1, 0, "ranked", 1.0, "m", 0, 0)
    with pytest.raises(ValueError, match=r"predictions has shape \(1, 3\)"):
        log.log_ranker_scores(["a:0"], "m", 0.5, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="derive request_id"):
        log.log_ranker_scores(["nocolon"], "m", 0.5, np.zeros((1, 5)))
    with pytest.raises(ValueError, match="candidate_scores has 1"):
        log.log_request("a", TOK, [1, 2], [0.5], [1])
    with pytest.raises(ValueError, match="features has 1 rows"):
        log.log_served_features("a", [1, 2], np.zeros((1, 4)))
    with pytest.raises(ValueError, match="watched_seconds"):
        log.log_engagements(["a:0"], TOK, watched_seconds=float("nan"))
    small = EventLog(tmp_path / "c", queue_capacity=5)
    with pytest.raises(ValueError, match="more than queue_capacity=5"):
        small.log_impressions(
            [f"a:{i}" for i in range(6)], "a", TOK, 1, 0, "ranked", 1.0, "m", 0, 0
        )
    small.close()
    with pytest.raises(ValueError, match="timeout"):
        log.flush(timeout=-1)
    # a rejected batch logs nothing
    assert sum(log.stats()["enqueued"].values()) == 0
    log.close()


def test_user_token_spec_and_tokenizer():
    import hashlib
    import hmac

    want = hmac.new(KEY, b"alice", hashlib.sha256).hexdigest()[:32]
    assert user_token(KEY, "alice") == want
    t = UserTokenizer(KEY)
    ids = [f"user-{i}" for i in range(100)] + ["ünïcødé", ""]
    assert t.tokens(ids) == [
        hmac.new(KEY, u.encode(), hashlib.sha256).hexdigest()[:32] for u in ids
    ]
    assert t.token("alice") == want
    assert "kkkk" not in repr(t)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        UserTokenizer(b"short")
    with pytest.raises(TypeError):
        UserTokenizer("a string key is not bytes")  # type: ignore[arg-type]


def test_threads_log_concurrently(tmp_path):
    root = str(tmp_path)
    log = EventLog(root, rotate_rows=1000)
    errors = []

    def work(t):
        try:
            for b in range(20):
                ids = [f"t{t}b{b}r{r}:{s}" for r in range(10) for s in range(5)]
                reqs = [i.split(":")[0] for i in ids]
                log.log_impressions(
                    ids, reqs, TOK, 1, np.tile(np.arange(5), 10), "ranked", 1.0, "m", 0, 0, ts=T0
                )
                log.log_exploration(ids[::5], TOK, 1, 0, 0, 0.2, ts=T0)
                if b % 7 == 0:
                    log.flush()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    log.close()
    assert not errors
    ids = read(root, "impressions").column("impression_id").to_pylist()
    assert len(ids) == len(set(ids)) == 4 * 20 * 50
    assert read(root, "exploration_events").num_rows == 4 * 20 * 10


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 20),
    wrong=st.sampled_from(["none", "items", "positions", "props", "tokens"]),
    pct=st.floats(0.5, 100.0),
)
def test_fuzz_boundary_never_crashes(tmp_path_factory, n, wrong, pct):
    root = tmp_path_factory.mktemp("fz")
    log = EventLog(root, sample_pct=pct)
    ids = [f"r{i // 3}:{i % 3}" for i in range(n)]
    items = np.arange(n + (wrong == "items") * 2, dtype=np.uint64)
    positions = np.arange(n + (wrong == "positions") * 2) % 3
    props = np.full(n, 0.5) if wrong != "props" else np.full(n, 2.0)
    toks = TOK if wrong != "tokens" else "not-a-token"
    reqs = [i.split(":")[0] for i in ids]
    should_fail = wrong in ("items", "positions") or (wrong in ("props", "tokens") and n > 0)
    if should_fail:
        with pytest.raises(ValueError):
            log.log_impressions(ids, reqs, toks, items, positions, "ranked", props, "m", 0, 0)
        assert sum(log.stats()["enqueued"].values()) == 0
    else:
        got = log.log_impressions(ids, reqs, toks, items, positions, "ranked", props, "m", 0, 0)
        want = sum(keep_reference(r, pct) for r in reqs)
        assert got == want
    log.close()
    written = sum(pq.ParquetFile(f).metadata.num_rows for f in files(str(root), "impressions"))
    assert written == log.stats()["written"]["impressions"]
