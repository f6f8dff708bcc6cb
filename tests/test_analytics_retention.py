"""`fyp-core retention`: rollups are written (atomically, de-identified) before raw partitions
older than N days are deleted; totals survive; reruns are idempotent."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from _analytics_fixtures import sim_log

from fyp_core import _core, analytics
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


def _fyp_core_cli() -> list[str]:
    """The command a user types: the installed `fyp-core` script, else `python -m`."""
    script = Path(sys.executable).with_name("fyp-core")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fyp_core.cli"]


def test_cli_retention_in_a_fresh_interpreter(logdir):
    """As a user runs it: a fresh interpreter (no pyarrow.compute imported first), days to roll
    up."""
    days = partitions(logdir, "impressions")
    proc = subprocess.run(
        [*_fyp_core_cli(), "retention", logdir, "--days", "30"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(logdir),
    )
    assert proc.returncode == 0, proc.stderr
    assert "cutoff" in proc.stdout
    # the sim logs are older than 30 days: every day was rolled up, then deleted
    for d in days:
        assert rollup_path(logdir, d[3:]).exists(), d
    assert not (Path(logdir) / "impressions").exists() or partitions(logdir, "impressions") == []


def test_retention_covers_every_table_the_log_writes(logdir):
    """The table list is the event log's own (feature_events holds user tokens too)."""
    assert set(analytics.TABLES) | {"feature_events"} <= set(_core.EVENTLOG_TABLES)
    days = partitions(logdir, "impressions")
    old = days[0]
    # one old partition for each table the simulated log lacks, with a token column
    planted = []
    for table in _core.EVENTLOG_TABLES:
        part = Path(logdir) / table / old / "hour=00"
        if not part.exists():
            part.mkdir(parents=True)
            pq.write_table(pa.table({"user_token": ["0" * 32]}), part / "part-x.parquet")
            planted.append(table)
    assert "feature_events" in planted
    now = dt.datetime.fromisoformat(old[3:]).replace(tzinfo=dt.timezone.utc)
    res = run_retention(logdir, days=1, now=now + dt.timedelta(days=2))
    assert res.cutoff == days[1][3:]
    for table in _core.EVENTLOG_TABLES:
        base = Path(logdir) / table
        left = sorted(p.name for p in base.iterdir()) if base.is_dir() else []
        assert old not in left, f"{table} partition {old} was not expired"
