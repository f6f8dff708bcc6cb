"""fyp_core.analytics on Apache Spark (local[2]): every query equals DuckDB's on one simulated log
(1% sampled days included), ``fyp-core report --engine spark`` writes DuckDB's report, and a
query running during a compaction sees all old or all new files."""

from __future__ import annotations

import pytest
from _analytics_fixtures import sim_log
from _spark_fixtures import assert_rows_close, require_spark, session

from fyp_core import analytics

require_spark()

PARAMS = {"rollup_user_day_topic": {"dt_from": "2026-01-05", "dt_to": "2026-01-07"}}
ROW_KEYED = ("impression_outcomes", "slot_residuals")  # no ORDER BY: compare by impression_id


@pytest.fixture(scope="module")
def log():
    # days cycle through 100%, 1% and 25% firehose sampling: the reweighting is exercised
    return sim_log(
        n_requests=2_500,
        n_users=500,
        n_items=3_000,
        days=4,
        seed=11,
        sampled_pct_by_day=(100.0, 1.0, 25.0),
    )


@pytest.fixture(scope="module")
def spark_con(log):
    con = analytics.connect(log.root, engine="spark", spark=session())
    yield con
    con.close()


def _rows(t, name):
    rows = t.to_pylist()
    return sorted(rows, key=lambda r: r["impression_id"]) if name in ROW_KEYED else rows


def test_report_and_every_query_equal_duckdb(log, spark_con, monkeypatch, tmp_path):
    """`fyp-core report --engine spark` writes DuckDB's report byte for byte; every query it ran
    on Spark, and the others, equal DuckDB's results to 1e-9 (the JVM is slow: one pass)."""
    from fyp_core import cli

    pct = analytics.read_table(log.root, "impressions", ["sampled_pct"])["sampled_pct"]
    assert {1.0, 25.0, 100.0} <= set(pct.to_pylist())
    ran, real_run = {}, analytics.run

    def recording_run(name, root, con=None, engine=None, **kw):
        out = real_run(name, root, con, engine, **kw)
        ran[name] = (kw, out)
        return out

    monkeypatch.setattr(analytics, "run", recording_run)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767571200")  # the two runs may straddle a minute
    out_s, out_d = tmp_path / "spark.html", tmp_path / "duck.html"
    assert cli.main(["report", log.root, "--engine", "spark", "--out", str(out_s)]) == 0
    monkeypatch.setattr(analytics, "run", real_run)
    assert cli.main(["report", log.root, "--out", str(out_d)]) == 0
    assert out_s.read_text() == out_d.read_text()
    assert len(ran) == 9  # the 8 report queries + impression_outcomes for the shadow OPE
    duck = analytics.connect(log.root)
    for name in analytics.QUERIES:
        kw = ran[name][0] if name in ran else PARAMS.get(name, {})
        got = ran[name][1] if name in ran else analytics.run(name, log.root, spark_con, **kw)
        want = _rows(analytics.run(name, log.root, duck, **kw), name)
        assert want, name
        assert_rows_close(_rows(got, name), want, name)


def test_parameters_and_adhoc_sql(log, spark_con):
    duck = analytics.connect(log.root)
    q = "SELECT count(*) AS n, sum(w) AS slots, sum(w * engaged::INT) AS e FROM outcomes"
    assert_rows_close(
        spark_con.sql(q).toArrow().to_pylist(), duck.sql(q).to_arrow_table().to_pylist(), "sql"
    )
    # a parameter reaches the shared views (window_hours lives in `outcomes`)
    short = analytics.lift_by_topic(log.root, window_hours=1e-4, con=spark_con).to_pylist()
    want = analytics.lift_by_topic(log.root, window_hours=1e-4).to_pylist()
    assert_rows_close(short, want, "lift_by_topic(window_hours=1e-4)")
    assert (
        short[-1]["ranked_rate"] < analytics.lift_by_topic(log.root).to_pylist()[-1]["ranked_rate"]
    )


def test_spark_reader_during_compaction(tmp_path):
    """A Spark query running while its partitions are compacted sees all old or all new files."""
    import shutil
    import threading

    from test_compact import NOW, split_files

    from fyp_core.compact import compact

    src = sim_log(n_requests=1_500, n_users=300, n_items=2_000, days=1, seed=5)
    root = str(tmp_path / "log")
    shutil.copytree(src.root, root)
    split_files(root)
    want = analytics.daily_summary(root).to_pylist()
    con = analytics.connect(root, engine="spark", spark=session())
    done = []
    worker = threading.Thread(
        target=lambda: done.extend(
            compact(root, table=t, older_than_hours=2, now=NOW).merged
            for t in ("engagements", "impressions")
        )
    )
    worker.start()
    try:
        got = analytics.daily_summary(root, con=con).to_pylist()
    finally:
        worker.join()
        con.close()
    assert all(done) and len(done) == 2
    assert_rows_close(got, want, "daily_summary during compaction")
