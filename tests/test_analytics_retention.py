"""`fyp-core retention`: rollups are written (atomically, de-identified) before raw partitions
older than N days are deleted; totals survive; reruns are idempotent."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from _analytics_fixtures import sim_log

from fyp_core import analytics
from fyp_core.cli import main
from fyp_core.retention import rollup_path, run_retention


@pytest.fixture()
def logdir(tmp_path):
    src = sim_log(days=6, n_requests=4000, n_users=500, n_items=4000, seed=3).root
    dst = tmp_path / "logs"
    shutil.copytree(src, dst)
    return str(dst)


def partitions(root, table):
    return sorted(p.name for p in (Path(root) / table).iterdir())


def test_rollup_then_delete(logdir):
    days = partitions(logdir, "impressions")
    assert len(days) == 6
    now = dt.datetime.fromisoformat(days[0][3:]).replace(tzinfo=dt.timezone.utc)
    now += dt.timedelta(days=3 + 2)  # keep 2 days -> the first 3 days expire
    before = analytics.rollup_user_day_topic(logdir, days[0][3:], days[-1][3:])
    res = run_retention(logdir, days=2, now=now)
    expired = [d[3:] for d in days[:3]]
    assert res.cutoff == days[3][3:]
    assert res.rolled_up == expired
    for table in analytics.TABLES:
        left = partitions(logdir, table)
        assert all(p[3:] >= res.cutoff for p in left), table
    assert partitions(logdir, "impressions") == days[3:]
    # rollups equal the rollup query over the raw data before deletion
    got = analytics.read_table(logdir, "impressions")  # the raw that is left still reads
    assert got.num_rows > 0
    for d in expired:
        f = rollup_path(logdir, d)
        assert f.exists() and not list(f.parent.glob(".*"))
        t = pq.read_table(f)
        assert set(t.column_names) >= {"user_token", "dt", "topic", "impressions", "engaged"}
        assert not {"item_id", "request_id", "impression_id", "creator_id"} & set(t.column_names)
        assert pq.read_schema(f).metadata[b"fyp.table"] == b"rollup_user_day_topic"
        want = before.filter(pc.equal(before["dt"], d))
        assert t.num_rows == want.num_rows > 0
        for c in ("impressions", "engaged", "completed", "watched_seconds"):
            np.testing.assert_allclose(t[c].to_numpy(), want[c].to_numpy())
    assert res.bytes_freed > 0 and len(res.deleted) >= 3 * 4
    # idempotent: a second run deletes nothing and rewrites no rollup
    mtime = rollup_path(logdir, expired[0]).stat().st_mtime_ns
    again = run_retention(logdir, days=2, now=now)
    assert again.rolled_up == [] and again.deleted == []
    assert rollup_path(logdir, expired[0]).stat().st_mtime_ns == mtime


def test_dry_run_touches_nothing(logdir):
    days = partitions(logdir, "impressions")
    now = dt.datetime.fromisoformat(days[-1][3:]).replace(tzinfo=dt.timezone.utc)
    res = run_retention(logdir, days=1, now=now + dt.timedelta(days=1), dry_run=True)
    assert res.deleted and partitions(logdir, "impressions") == days
    assert not (Path(logdir) / "rollups").exists()


def test_cli_retention(logdir, capsys):
    assert main(["retention", logdir, "--days", "30"]) == 0  # sim logs are from 2026-01
    out = capsys.readouterr().out
    assert "cutoff" in out
    with pytest.raises(SystemExit):
        main(["retention", logdir, "--days", "x"])
    assert main(["retention", logdir + "-missing", "--days", "3"]) == 2


def test_validation(logdir):
    with pytest.raises(ValueError, match="days"):
        run_retention(logdir, days=0)
    with pytest.raises(ValueError, match="does not exist"):
        run_retention(logdir + "-nope")
