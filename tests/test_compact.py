"""fyp-core compact: one file per closed hour partition, swapped atomically under concurrent
DuckDB readers (every read sees all old or all new files), retention unchanged."""

from __future__ import annotations

import datetime as _dt
import shutil
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _analytics_fixtures import sim_log

from fyp_core import analytics
from fyp_core.compact import _table_lock, compact, compact_partition, exchange_dirs

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


def _resplit(root: str, tables=("impressions", "engagements"), k: int = 3) -> None:
    """Split every compacted partition back into ``k`` files, each swapped in atomically, one
    pass per table under its lock (as a compactor's pass)."""
    for table in tables:
        with _table_lock(root, table) as staging:
            for part in sorted(Path(root).glob(f"{table}/dt=*/hour=*")):
                files = list(part.glob("*.parquet"))
                if len(files) != 1:
                    continue
                new = staging / f"{table}-resplit" / part.name
                new.mkdir(parents=True)
                t = pq.read_table(files[0])
                step = max(1, -(-t.num_rows // k))
                for i, s in enumerate(range(0, t.num_rows, step)):
                    pq.write_table(t.slice(s, step), new / f"part-resplit{i}.parquet")
                exchange_dirs(str(new), str(part))
                shutil.rmtree(new.parent)


def test_a_read_slower_than_the_gaps_between_passes_still_ends(logdir):
    """Passes back to back (split, compact, split...) and a read that lists its files, then takes
    0.3 s before opening them: every optimistic attempt loses the race, the last one (holding the
    compaction locks shared) ends with the whole table (it raised after 8 attempts before)."""
    want = analytics.read_table(logdir, "impressions").num_rows
    stop, passes, tries = threading.Event(), [0], [0]

    def passes_back_to_back() -> None:
        while not stop.is_set():
            compact(logdir, table="impressions", older_than_hours=2, now=NOW)
            _resplit(logdir, tables=("impressions",))
            passes[0] += 1

    def slow_read() -> int:
        tries[0] += 1
        files = analytics.table_files(logdir, "impressions")
        time.sleep(0.3)
        return sum(pq.read_metadata(f).num_rows for f in files)

    t = threading.Thread(target=passes_back_to_back)
    t.start()
    try:
        while passes[0] < 2:
            time.sleep(0.01)
        got = analytics._retrying(slow_read, logdir)
    finally:
        stop.set()
        t.join()
    assert got == want
    assert tries[0] >= 2, "no attempt lost the race: the test did not race"


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
    rounds, merged = 0, 0
    try:  # compact, split again, compact... until the readers have read through several swaps
        while rounds < 2 or (len(seen) < 8 and rounds < 30):
            for table in ("impressions", "engagements"):
                merged += len(compact(logdir, table=table, older_than_hours=2, now=NOW).merged)
            _resplit(logdir)
            rounds += 1
            time.sleep(0.5)  # passes come from a cron job, not back to back
    finally:
        done.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(seen) >= 8
    bad = [s for s in seen if s != want and s != ("rows", n_imp)]
    assert bad == [], bad[:2]
    assert merged >= 2 * 24
    res = compact(logdir, older_than_hours=2, now=NOW)
    parts = {f.parent for f in Path(logdir).glob("*/dt=*/hour=*/*.parquet")}
    assert all(len(list(p.glob("*.parquet"))) == 1 for p in parts)
    assert res.merged and _answers(logdir) == want
    assert not [p for p in (Path(logdir) / ".compact").iterdir() if p.suffix != ".lock"]
    again = compact(logdir, older_than_hours=2, now=NOW)
    assert again.merged == [] and len(again.skipped) == len(parts)


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


def test_a_crashed_run_leaves_the_partition_whole(logdir, monkeypatch):
    """A failure before the swap changes nothing visible; its staging is removed next run."""
    import fyp_core.compact as compact_mod

    part = next(Path(logdir).glob("impressions/dt=*/hour=*"))
    dt, hour = part.parent.name[3:], int(part.name[5:])
    before = sorted(p.name for p in part.glob("*.parquet"))

    def crash(a, b):
        raise OSError("simulated crash before the swap")

    monkeypatch.setattr(compact_mod, "exchange_dirs", crash)
    with pytest.raises(OSError, match="simulated crash"):
        compact_partition(logdir, "impressions", dt, hour, now=NOW)
    assert sorted(p.name for p in part.glob("*.parquet")) == before
    leftover = Path(logdir) / ".compact" / "impressions-crashed"
    leftover.mkdir()
    monkeypatch.undo()
    compact_partition(logdir, "impressions", dt, hour, now=NOW)
    assert len(list(part.glob("*.parquet"))) == 1 and not leftover.exists()


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
