"""fyp-core compact: one file per closed hour partition, swapped atomically under concurrent
DuckDB readers (every read sees all old or all new files), retention unchanged."""

from __future__ import annotations

import datetime as _dt
import shutil
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _analytics_fixtures import sim_log

from fyp_core import analytics
from fyp_core.compact import compact, compact_partition

NOW = _dt.datetime(2026, 3, 1, tzinfo=_dt.timezone.utc)


def split_files(root: str, k: int = 3) -> int:
    """Rewrite every partition's file as ``k`` files (the small-file problem); returns files."""
    n = 0
    for f in sorted(Path(root).glob("*/dt=*/hour=*/part-*.parquet")):
        t = pq.read_table(f)
        step = max(1, -(-t.num_rows // k))
        for i, s in enumerate(range(0, t.num_rows, step)):
            pq.write_table(t.slice(s, step), f.with_name(f"part-split{i}-{f.name[5:]}"))
            n += 1
        f.unlink()
    return n


@pytest.fixture()
def logdir(tmp_path):
    src = sim_log(n_requests=1_500, n_users=300, n_items=2_000, days=1, seed=5)
    root = tmp_path / "log"
    shutil.copytree(src.root, root)
    split_files(str(root))
    return str(root)


def _answers(root: str) -> tuple:
    d = analytics.daily_summary(root).to_pylist()
    return tuple((r["day"], r["rows_logged"], round(r["slots"], 6)) for r in d)


def test_concurrent_readers_see_all_old_or_all_new(logdir):
    want = _answers(logdir)
    n_imp = analytics.read_table(logdir, "impressions").num_rows
    seen, errors, done = [], [], threading.Event()

    def reader():
        while not done.is_set():
            try:
                seen.append(_answers(logdir))
                seen.append(("rows", analytics.read_table(logdir, "impressions").num_rows))
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(e))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        res = compact(logdir, table="impressions", older_than_hours=2, now=NOW)
        res2 = compact(logdir, table="engagements", older_than_hours=2, now=NOW)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(seen) >= 2
    assert all(s == want or s == ("rows", n_imp) for s in seen)
    assert res.merged and res.files_before >= 2 * len(res.merged) and res2.merged
    parts = {f.parent for f in Path(logdir).glob("*/dt=*/hour=*/*.parquet")}
    parts = {p for p in parts if p.parent.parent.name in ("impressions", "engagements")}
    assert all(len(list(p.glob("*.parquet"))) == 1 for p in parts)
    assert _answers(logdir) == want
    assert not any((Path(logdir) / ".compact").iterdir()) or all(
        p.suffix == ".lock" for p in (Path(logdir) / ".compact").iterdir()
    )
    again = compact(logdir, table="impressions", older_than_hours=2, now=NOW)
    assert again.merged == [] and again.skipped


def test_retention_after_compaction_keeps_the_rollups(logdir, tmp_path):
    from fyp_core.retention import rollup_path, run_retention

    plain = tmp_path / "plain"
    shutil.copytree(logdir, plain)
    compact(logdir, older_than_hours=2, now=NOW)
    a = run_retention(logdir, days=30, now=NOW)
    b = run_retention(str(plain), days=30, now=NOW)
    assert a.rolled_up == b.rolled_up and a.rollup_rows == b.rollup_rows > 0
    for d in a.rolled_up:
        ta = pq.read_table(rollup_path(logdir, d)).sort_by(
            [("user_token", "ascending"), ("topic", "ascending")]
        )
        tb = pq.read_table(rollup_path(str(plain), d)).sort_by(
            [("user_token", "ascending"), ("topic", "ascending")]
        )
        assert ta.equals(tb)


def test_refuses_open_hours_and_bad_arguments(logdir):
    part = next(Path(logdir).glob("impressions/dt=*/hour=*"))
    dt, hour = part.parent.name[3:], int(part.name[5:])
    young = _dt.datetime.strptime(dt, "%Y-%m-%d").replace(tzinfo=_dt.timezone.utc)
    young += _dt.timedelta(hours=hour + 1, minutes=30)
    with pytest.raises(ValueError, match="min_age_hours"):
        compact_partition(logdir, "impressions", dt, hour, now=young)
    (part / ".part-w-000001.parquet.tmp").write_bytes(b"")
    with pytest.raises(ValueError, match="a writer is still writing"):
        compact_partition(logdir, "impressions", dt, hour, now=NOW)
    with pytest.raises(ValueError, match="table must be one of"):
        compact_partition(logdir, "nope", dt, hour, now=NOW)
    with pytest.raises(ValueError, match="dt must be YYYY-MM-DD"):
        compact_partition(logdir, "impressions", "01/05/2026", hour, now=NOW)
    with pytest.raises(ValueError, match="hour must be a whole number"):
        compact_partition(logdir, "impressions", dt, 24, now=NOW)
    with pytest.raises(ValueError, match="either table, dt and hour"):
        compact(logdir, table="impressions", dt=dt)


def test_cli_compact(logdir, capsys):
    from fyp_core import cli

    part = next(Path(logdir).glob("engagements/dt=*/hour=*"))
    args = [
        "compact",
        logdir,
        "--table",
        "engagements",
        "--dt",
        part.parent.name[3:],
        "--hour",
        part.name[5:],
    ]
    assert cli.main(args) == 0
    assert "compacted 1 partition(s)" in capsys.readouterr().out
    assert len(list(part.glob("*.parquet"))) == 1
    assert cli.main(["compact", logdir]) == 2
    assert "--older-than-hours" in capsys.readouterr().err
