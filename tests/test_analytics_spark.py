"""fyp_core.analytics on Apache Spark (local[2]): every query equals DuckDB's on one simulated log
(1% sampled days included), and ``fyp-core report --engine spark`` writes DuckDB's report."""

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


def test_every_query_equals_duckdb(log, spark_con):
    pct = set(
        analytics.read_table(log.root, "impressions", ["sampled_pct"])["sampled_pct"].to_pylist()
    )
    assert {1.0, 25.0, 100.0} <= pct
    duck = analytics.connect(log.root)
    for name in analytics.QUERIES:
        kw = PARAMS.get(name, {})
        want = _rows(analytics.run(name, log.root, duck, **kw), name)
        got = _rows(analytics.run(name, log.root, spark_con, **kw), name)
        assert want, name
        assert_rows_close(got, want, name)
    # a parameter reaches the shared views (window_hours lives in `outcomes`)
    short = analytics.lift_by_topic(log.root, window_hours=1e-4, con=spark_con).to_pylist()
    assert_rows_close(
        short,
        analytics.lift_by_topic(log.root, window_hours=1e-4).to_pylist(),
        "lift_by_topic(window_hours=1e-4)",
    )
    assert (
        short[-1]["ranked_rate"] < analytics.lift_by_topic(log.root).to_pylist()[-1]["ranked_rate"]
    )


def test_report_engine_spark_equals_duckdb(log, tmp_path):
    from fyp_core import cli

    session()  # the report picks up the active session
    out_s, out_d = tmp_path / "spark.html", tmp_path / "duck.html"
    assert cli.main(["report", log.root, "--engine", "spark", "--out", str(out_s)]) == 0
    assert cli.main(["report", log.root, "--out", str(out_d)]) == 0
    assert out_s.read_text() == out_d.read_text()
