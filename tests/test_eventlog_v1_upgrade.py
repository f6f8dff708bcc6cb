"""Event-log schema version 2 adds the integer join key ``impression_key``: a log written with
version 1 (no key) is refused by the analytics with a message naming the fix, and ``fyp-core
compact`` rewrites its closed partitions with the key, after which every query answers exactly
what it answers on the same log written as version 2."""

from __future__ import annotations

import datetime as _dt
import glob
import os
import shutil

import pyarrow.parquet as pq
import pytest
import xxhash

from fyp_core import analytics
from fyp_core.analytics.duck import outcome_labels
from fyp_core.analytics.synthetic import generate_log
from fyp_core.compact import compact

FUTURE = _dt.datetime(2100, 1, 1, tzinfo=_dt.timezone.utc)


def _downgrade_to_v1(root: str) -> int:
    """Rewrite every file as a version-1 writer wrote it: no impression_key, version "1"."""
    n = 0
    for f in glob.glob(os.path.join(root, "*", "*", "*", "*.parquet")):
        t = pq.read_table(f)
        if "impression_key" not in t.column_names:
            continue
        meta = {**t.schema.metadata, b"fyp.schema_version": b"1"}
        t = t.drop_columns(["impression_key"]).replace_schema_metadata(meta)
        pq.write_table(t, f, compression="zstd")
        n += 1
    return n


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    v2 = str(tmp_path_factory.mktemp("v2"))
    generate_log(v2, n_requests=1_500, n_users=200, n_items=1_500, days=2, seed=3)
    v1 = str(tmp_path_factory.mktemp("v1") / "log")
    shutil.copytree(v2, v1)
    assert _downgrade_to_v1(v1) > 0
    return v1, v2


def test_version_1_is_refused_with_the_fix_then_upgraded_by_compact(logs):
    v1, v2 = logs
    with pytest.raises(ValueError, match=r"schema version 1 .*fyp-core compact"):
        analytics.run("shadow_vs_live", v1)
    # training-set labels run the same views over the engagements: the same refusal
    imps = analytics.read_table(v2, "impressions", ["impression_id", "ts"]).slice(0, 50)
    assert outcome_labels(imps, v2).num_rows == 50
    with pytest.raises(ValueError, match=r"schema version 1 .*fyp-core compact"):
        outcome_labels(imps, v1)
    res = compact(v1, older_than_hours=0, now=FUTURE)
    assert res.merged, "every partition of a keyed table is rewritten"
    for f in glob.glob(os.path.join(v1, "impressions", "*", "*", "*.parquet")):
        t = pq.read_table(f, columns=["impression_id", "impression_key"])
        assert t.schema.metadata[b"fyp.schema_version"] == b"2"
        ids = t.column("impression_id").to_pylist()
        assert t.column("impression_key").to_pylist() == [
            xxhash.xxh3_64_intdigest(i.encode()) for i in ids
        ]
    for q in ("shadow_vs_live", "shadow_calibration", "lift_by_topic", "position_bias"):
        a = analytics.run(q, v1).to_pylist()
        b = analytics.run(q, v2).to_pylist()
        # the same rows; sums may differ in the last bits (compaction changed the file order)
        assert len(a) == len(b), q
        for ra, rb in zip(a, b):
            assert ra.keys() == rb.keys(), q
            for k in ra:
                if isinstance(ra[k], float):
                    assert ra[k] == pytest.approx(rb[k], rel=1e-9, abs=1e-12), (q, k)
                else:
                    assert ra[k] == rb[k], (q, k)


def test_compact_leaves_version_2_single_files_alone(logs):
    _, v2 = logs
    res = compact(v2, table="impressions", older_than_hours=0, now=FUTURE)
    assert not res.merged or all("impressions" in m for m in res.merged)
    again = compact(v2, table="impressions", older_than_hours=0, now=FUTURE)
    assert again.merged == []
