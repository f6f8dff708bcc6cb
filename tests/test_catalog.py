"""The catalogue directory (format v1): round trips, every validation error, atomic writes, loading
into a FeedPipeline, ``fyp-core serve --catalogue`` end to end, and a fuzzed manifest."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fyp_core import HnswIndex
from fyp_core.catalog import Catalogue, apply_catalogue, load_catalogue
from fyp_core.cli import main
from fyp_core.demo import build_pipeline
from fyp_core.synth import make_world

NOW = 1.8e9


def save_catalogue(path, *arrays, overwrite=False, **named):
    """Arrays -> a catalogue directory through the public API (validate, then an atomic save)."""
    return Catalogue.from_arrays(*arrays, **named).save(path, overwrite=overwrite)


@pytest.fixture(scope="module")
def world():
    return make_world(n_items=2000, n_users=150, seed=7, now=NOW)


@pytest.fixture(scope="module")
def catdir(world, tmp_path_factory) -> Path:
    return Catalogue.from_world(world).save(tmp_path_factory.mktemp("cat") / "world")


def small_arrays(n=50, dim=8, n_users=5, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "item_ids": rng.permutation(np.arange(10, 10 + n, dtype=np.uint64) * 1_000_003),
        "item_embeddings": rng.standard_normal((n, dim)).astype(np.float32),
        "topics": rng.integers(0, 20, n).astype(np.int32),
        "creators": rng.integers(0, 2**63, n, dtype=np.uint64) * 2 + 1,  # beyond int64 too
        "upload_ts": NOW - rng.uniform(0, 1e6, n),
        "categories": rng.integers(0, 3, n).astype(np.int32),
        "user_ids": [f"u{i}" for i in range(n_users)],
        "user_embeddings": rng.standard_normal((n_users, dim)).astype(np.float32),
        "creator_ids": np.array([3, 1, 2], dtype=np.uint64),
        "creator_authority": np.array([0.5, 0.25, 1.0], dtype=np.float32),
        "as_of": NOW,
    }


@pytest.fixture()
def good(tmp_path) -> Path:
    """A valid small catalogue, fresh for each test (tests corrupt it)."""
    return save_catalogue(tmp_path / "c", **small_arrays())


def args(**kw) -> argparse.Namespace:
    base = dict(ef_construction=32, seed=0, explore_rate=0.05, candidates=200, ef=200)
    base.update(kw)
    return argparse.Namespace(**base)


# ---------------------------------------------------------------- round trips


def test_round_trip_arrays_and_dtypes(tmp_path) -> None:
    a = small_arrays()
    save_catalogue(tmp_path / "c", **a, created_by="test")
    c = load_catalogue(tmp_path / "c")
    for name, dt in [
        ("item_ids", np.uint64),
        ("topics", np.int32),
        ("creators", np.uint64),
        ("categories", np.int32),
        ("upload_ts", np.float64),
        ("item_embeddings", np.float32),
        ("user_embeddings", np.float32),
        ("creator_ids", np.uint64),
        ("creator_authority", np.float32),
    ]:
        got = getattr(c, name)
        assert got.dtype == dt, name
        np.testing.assert_array_equal(got, a[name], err_msg=name)
    assert c.user_ids == a["user_ids"]
    assert (c.dim, c.n_items, c.n_users, c.n_creators, c.as_of) == (8, 50, 5, 3, NOW)
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m == {
        "format": "fyp_core.catalogue",
        "version": 1,
        "dim": 8,
        "n_items": 50,
        "n_users": 5,
        "as_of": NOW,
        "created_by": "test",
    }
    assert c.manifest == m and c.path == str(tmp_path / "c")
    # memory-mapped and read-only by default; a private writable copy without mmap
    assert not c.item_embeddings.flags.writeable
    assert isinstance(c.item_embeddings.base, np.memmap) or isinstance(c.item_embeddings, np.memmap)
    c2 = load_catalogue(tmp_path / "c", mmap=False)
    assert c2.item_embeddings.flags.writeable
    np.testing.assert_array_equal(c2.item_embeddings, a["item_embeddings"])
    # the files are what the docs say: readable by plain pyarrow/numpy
    t = pq.read_table(tmp_path / "c" / "items.parquet")
    assert t.schema.field("item_id").type == pa.uint64()
    assert t.schema.field("topic").type == pa.int32()
    assert t.schema.field("upload_ts").type == pa.float64()
    assert np.load(tmp_path / "c" / "item_embeddings.npy").shape == (50, 8)


def test_optional_parts_absent(tmp_path) -> None:
    a = small_arrays()
    save_catalogue(
        tmp_path / "c",
        a["item_ids"],
        a["item_embeddings"],
        a["topics"],
        a["creators"],
        a["upload_ts"],
        as_of=123.0,
    )
    assert sorted(os.listdir(tmp_path / "c")) == [
        "item_embeddings.npy",
        "items.parquet",
        "manifest.json",
    ]
    c = load_catalogue(tmp_path / "c")
    assert c.user_ids == [] and c.user_embeddings is None and c.n_users == 0
    assert c.creator_ids is None and c.creator_authority is None and c.n_creators == 0
    np.testing.assert_array_equal(c.categories, np.zeros(50, np.int32))
    assert c.as_of == 123.0


def test_empty_catalogue_and_extra_columns(tmp_path) -> None:
    p = save_catalogue(
        tmp_path / "e",
        np.zeros(0, np.uint64),
        np.zeros((0, 8), np.float32),
        [],
        [],
        [],
        user_ids=[],
        user_embeddings=np.zeros((0, 8), np.float32),
    )
    c = load_catalogue(p)
    assert (c.n_items, c.item_embeddings.shape, c.n_users, c.dim) == (0, (0, 8), 0, 8)
    assert c.item_ids.dtype == np.uint64 and c.upload_ts.dtype == np.float64
    # unknown columns and manifest keys are ignored (room for later optional batch features)
    q = save_catalogue(tmp_path / "x", **small_arrays())
    _items(q, batch_ctr=pa.array(np.zeros(50)))
    _manifest(q, pipeline_hint="x")
    assert load_catalogue(q).n_items == 50


def test_world_export_matches_world(world, catdir, tmp_path) -> None:
    c = load_catalogue(catdir)
    np.testing.assert_array_equal(
        load_catalogue(Catalogue.from_world(world).save(tmp_path / "w")).item_ids, c.item_ids
    )
    np.testing.assert_array_equal(c.item_ids, world.item_ids)
    np.testing.assert_array_equal(c.item_embeddings, world.item_emb)
    np.testing.assert_array_equal(c.topics, world.item_topic)
    np.testing.assert_array_equal(c.creators, world.item_creator)
    np.testing.assert_array_equal(c.categories, world.item_category)
    np.testing.assert_array_equal(c.upload_ts, world.item_upload_ts)
    users = np.flatnonzero(world.user_has_long_term)
    assert c.user_ids == [world.user_ids[u] for u in users]
    np.testing.assert_array_equal(c.user_embeddings, world.user_long_term[users])
    assert c.as_of == world.now
    # authority: one per creator with items, logistic of the mean item quality (a reference)
    np.testing.assert_array_equal(c.creator_ids, np.unique(world.item_creator))
    k = 5
    q = world.item_quality[world.item_creator == c.creator_ids[k]].astype(np.float64).mean()
    assert c.creator_authority[k] == pytest.approx(1 / (1 + np.exp(-2 * q)), rel=1e-6)


def test_conversions_that_keep_values(tmp_path) -> None:
    a = small_arrays()
    a["topics"] = a["topics"].astype(np.int64)
    a["categories"] = a["categories"].astype(np.uint8)
    a["item_ids"] = a["item_ids"].astype(np.int64)
    a["upload_ts"] = np.round(a["upload_ts"]).astype(np.int64)
    a["item_embeddings"] = a["item_embeddings"].astype(np.float64)  # exactly float32 values
    a["creator_authority"] = a["creator_authority"].astype(np.float64)
    c = Catalogue.from_arrays(**a)
    assert c.topics.dtype == np.int32 and c.categories.dtype == np.int32
    assert c.item_ids.dtype == np.uint64 and c.upload_ts.dtype == np.float64
    assert c.item_embeddings.dtype == np.float32 and c.creator_authority.dtype == np.float32
    # float16 embeddings widen exactly
    h = a["item_embeddings"].astype(np.float16)
    c = Catalogue.from_arrays(**{**a, "item_embeddings": h})
    np.testing.assert_array_equal(c.item_embeddings, h.astype(np.float32))


# ---------------------------------------------------------------- atomic writes


def test_save_refuses_to_overwrite_and_replaces_when_asked(tmp_path) -> None:
    a = small_arrays()
    p = save_catalogue(tmp_path / "c", **a)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_catalogue(p, **a)
    b = small_arrays(n=30, seed=1)
    save_catalogue(p, **b, overwrite=True)
    assert load_catalogue(p).n_items == 30
    assert sorted(os.listdir(tmp_path)) == ["c"]  # no temp or old dirs left behind
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a catalogue"):
        save_catalogue(tmp_path / "other", **a, overwrite=True)
    assert (tmp_path / "other" / "precious.txt").exists()
    (tmp_path / "empty").mkdir()
    save_catalogue(tmp_path / "empty", **a, overwrite=True)
    assert load_catalogue(tmp_path / "empty").n_items == 50


def test_failed_save_leaves_old_catalogue_and_no_debris(tmp_path, monkeypatch) -> None:
    import fyp_core.catalog._write as catmod

    p = save_catalogue(tmp_path / "c", **small_arrays())

    def boom(path, a):
        raise OSError("disk full")

    monkeypatch.setattr(catmod, "_write_npy", boom)
    with pytest.raises(OSError, match="disk full"):
        save_catalogue(p, **small_arrays(n=10, seed=2), overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        save_catalogue(tmp_path / "new", **small_arrays())
    assert sorted(os.listdir(tmp_path)) == ["c"]
    assert load_catalogue(p).n_items == 50


def test_readers_see_one_whole_catalogue_while_it_is_replaced(tmp_path) -> None:
    """Threads load while another thread keeps replacing the catalogue: every load returns
    either A or B whole (same sizes, so a mix would pass the size checks: the topics tell)."""
    import threading

    a = small_arrays(n=200, seed=1)
    b = {**small_arrays(n=200, seed=2)}
    a["topics"] = np.full(200, 1, np.int32)
    b["topics"] = np.full(200, 2, np.int32)
    p = save_catalogue(tmp_path / "c", **a)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen = {1: 0, 2: 0}

    def writer() -> None:
        i = 0
        while not stop.is_set():
            save_catalogue(p, **(b if i % 2 == 0 else a), overwrite=True)
            i += 1
            time.sleep(0.02)  # back to back, but not a livelock: readers get a gap

    gave_up: list[int] = []

    def reader() -> None:
        try:
            for _ in range(40):
                try:
                    c = load_catalogue(p)
                except ValueError as e:
                    # the documented answer when every retry met a replacement (a loaded
                    # machine); never a mixed catalogue
                    assert "replaced while being read" in str(e), e
                    gave_up.append(1)
                    continue
                t = int(c.topics[0])
                src = a if t == 1 else b
                assert np.all(c.topics == t)
                np.testing.assert_array_equal(c.item_ids, src["item_ids"])
                np.testing.assert_array_equal(c.item_embeddings, src["item_embeddings"])
                seen[t] += 1
        except BaseException as e:  # surfaced below
            errors.append(e)

    w = threading.Thread(target=writer)
    readers = [threading.Thread(target=reader) for _ in range(3)]
    w.start()
    for r in readers:
        r.start()
    for r in readers:
        r.join()
    stop.set()
    w.join()
    assert not errors, errors[0]
    assert seen[1] + seen[2] + len(gave_up) == 120
    assert seen[1] + seen[2] >= 60, (seen, len(gave_up))  # most loads succeed
    assert sorted(os.listdir(tmp_path)) == ["c"]


# ---------------------------------------------------------------- validation errors


def _manifest(d: Path, **changes) -> None:
    m = json.loads((d / "manifest.json").read_text())
    for k, v in changes.items():
        if v is _DROP:
            m.pop(k, None)
        else:
            m[k] = v
    (d / "manifest.json").write_text(json.dumps(m))


_DROP = object()


def _items(d: Path, drop: tuple[str, ...] = (), **cols) -> None:
    t = pq.read_table(d / "items.parquet")
    data = {n: t.column(n) for n in t.column_names if n not in drop}
    data.update(cols)
    pq.write_table(pa.table(data), d / "items.parquet")


def _npy(d: Path, name: str, f) -> None:
    a = np.load(d / name)
    np.save(d / name, f(a))


def _nan_at(r, c):
    def f(a):
        a = a.copy()
        a[r, c] = np.nan
        return a

    return f


def _inf_user(a):
    a = a.copy()
    a[2, 1] = np.inf
    return a


# (mutation, exception, message fragment); each mutation gets a fresh valid catalogue
CASES = [
    (lambda d: os.remove(d / "manifest.json"), FileNotFoundError, "manifest.json is missing"),
    (lambda d: os.remove(d / "items.parquet"), FileNotFoundError, "items.parquet is missing"),
    (
        lambda d: os.remove(d / "item_embeddings.npy"),
        FileNotFoundError,
        r"item_embeddings.npy is missing: the item embeddings, float32 \(50, 8\)",
    ),
    (
        lambda d: os.remove(d / "user_embeddings.npy"),
        FileNotFoundError,
        "users.parquet is present but user_embeddings.npy is missing",
    ),
    (
        lambda d: os.remove(d / "users.parquet"),
        FileNotFoundError,
        "user_embeddings.npy is present but users.parquet is missing",
    ),
    (
        lambda d: [os.remove(d / "users.parquet"), os.remove(d / "user_embeddings.npy")],
        FileNotFoundError,
        "manifest says n_users = 5 but",
    ),
    (lambda d: shutil.rmtree(d), FileNotFoundError, "does not exist"),
    (
        lambda d: (d / "manifest.json").write_text("{not json"),
        ValueError,
        "is not valid JSON",
    ),
    (lambda d: (d / "manifest.json").write_text("[1, 2]"), ValueError, "JSON object, got list"),
    (lambda d: _manifest(d, format="parquet"), ValueError, "not a fyp_core catalogue"),
    (lambda d: _manifest(d, version=2), ValueError, "unknown catalogue format version 2"),
    (lambda d: _manifest(d, version=_DROP), ValueError, "unknown catalogue format version None"),
    (lambda d: _manifest(d, dim=32), ValueError, "8 columns but the manifest says dim = 32"),
    (lambda d: _manifest(d, dim=0), ValueError, "'dim' must be an integer >= 1"),
    (lambda d: _manifest(d, dim=8.0), ValueError, "'dim' must be an integer"),
    (lambda d: _manifest(d, n_items=51), ValueError, "50 rows but the manifest says n_items = 51"),
    (lambda d: _manifest(d, n_users=-1), ValueError, "'n_users' must be an integer >= 0"),
    (lambda d: _manifest(d, n_users=4), ValueError, "manifest says n_users = 4"),
    (lambda d: _manifest(d, as_of="today"), ValueError, "'as_of' must be finite seconds"),
    (lambda d: _manifest(d, as_of=_DROP), ValueError, "'as_of' must be finite"),
    (lambda d: _manifest(d, created_by=5), ValueError, "'created_by' must be a string"),
    (
        lambda d: _npy(d, "item_embeddings.npy", lambda a: a[:-1]),
        ValueError,
        "has 49 rows but items.parquet has 50",
    ),
    (
        lambda d: _npy(d, "user_embeddings.npy", lambda a: a[:-1]),
        ValueError,
        "has 4 rows but users.parquet has 5",
    ),
    (lambda d: _npy(d, "item_embeddings.npy", lambda a: a[:, :4]), ValueError, "dim = 8"),
    (
        lambda d: _npy(d, "item_embeddings.npy", lambda a: a.reshape(50, 2, 4)),
        ValueError,
        r"expected 2-D \(50, 8\)",
    ),
    (
        lambda d: _npy(d, "item_embeddings.npy", lambda a: a.astype(np.float64) + 1e-12),
        ValueError,
        r"narrowing it to float32 would round values.*astype\(np.float32\)",
    ),
    (
        lambda d: _npy(d, "item_embeddings.npy", lambda a: a.astype(np.int32)),
        ValueError,
        "must be float32, got int32",
    ),
    (
        lambda d: _npy(d, "item_embeddings.npy", _nan_at(5, 3)),
        ValueError,
        "NaN or Inf at row 5, column 3",
    ),
    (
        lambda d: _npy(d, "user_embeddings.npy", _inf_user),
        ValueError,
        "user_embeddings.npy: user_embeddings.npy has a NaN or Inf at row 2, column 1",
    ),
    (
        lambda d: (d / "item_embeddings.npy").write_bytes(b"\x93NUMPY garbage"),
        ValueError,
        "not a readable .npy file",
    ),
    (
        lambda d: (d / "items.parquet").write_bytes(b"PAR1 not really"),
        ValueError,
        "not a readable Parquet file",
    ),
    (
        lambda d: _items(d, item_id=pa.array([7] * 50, pa.uint64())),
        ValueError,
        "item_id has 49 duplicate value",
    ),
    (
        lambda d: _items(d, topic=pa.array([2**40] * 50, pa.int64())),
        ValueError,
        "topic holds 1099511627776, outside",
    ),
    (
        lambda d: _items(d, topic=pa.array([-1] * 50, pa.int64())),
        ValueError,
        "topic holds -1, outside",
    ),
    (
        lambda d: _items(d, topic=pa.array([1.5] * 50, pa.float64())),
        ValueError,
        "topic must be integers .* got float64: converting would lose",
    ),
    (
        lambda d: _items(d, item_id=pa.array(np.arange(-1, 49), pa.int64())),
        ValueError,
        "item_id holds -1",
    ),
    (
        lambda d: _items(d, upload_ts=pa.array(["x"] * 50)),
        ValueError,
        "'upload_ts' is string, expected a number",
    ),
    (
        lambda d: _items(d, upload_ts=pa.array([np.inf] * 50)),
        ValueError,
        r"upload_ts\[0\] = inf is not finite",
    ),
    (lambda d: _items(d, drop=("creator_id",)), ValueError, "has no column 'creator_id'"),
    (
        lambda d: _items(d, topic=pa.array([None] + [1] * 49, pa.int32())),
        ValueError,
        "'topic' has 1 null",
    ),
    (
        lambda d: pq.write_table(
            pa.table({"user_id": pa.array(["a", "b", "a", "c", "d"])}), d / "users.parquet"
        ),
        ValueError,
        "user_id has duplicates.*'a'",
    ),
    (
        lambda d: pq.write_table(
            pa.table({"user_id": pa.array([1, 2, 3, 4, 5])}), d / "users.parquet"
        ),
        ValueError,
        "'user_id' is int64, expected string",
    ),
    (
        lambda d: pq.write_table(
            pa.table({"user_id": pa.array(["a", "", "c", "d", "e"])}), d / "users.parquet"
        ),
        ValueError,
        "non-empty strings",
    ),
    (
        lambda d: pq.write_table(
            pa.table(
                {
                    "creator_id": pa.array([1, 1], pa.uint64()),
                    "authority": pa.array([0.1, 0.2], pa.float32()),
                }
            ),
            d / "creators.parquet",
        ),
        ValueError,
        "creator_id has 1 duplicate",
    ),
    (
        lambda d: pq.write_table(
            pa.table(
                {
                    "creator_id": pa.array([1, 2], pa.uint64()),
                    "authority": pa.array([0.1, np.nan], pa.float32()),
                }
            ),
            d / "creators.parquet",
        ),
        ValueError,
        "authority has a NaN or Inf at row 1",
    ),
    (
        lambda d: pq.write_table(
            pa.table({"creator_id": pa.array([1, 2], pa.uint64())}), d / "creators.parquet"
        ),
        ValueError,
        "has no column 'authority'",
    ),
]


@pytest.mark.parametrize(("mutate", "exc", "fragment"), CASES)
def test_every_validation_error_says_what_to_fix(good, mutate, exc, fragment) -> None:
    mutate(good)
    with pytest.raises(exc, match=fragment):
        load_catalogue(good)


def test_accepted_on_disk_variants(good) -> None:
    """Widenings and value-preserving narrowings load; category may be left out."""
    n = 50
    ts = pq.read_table(good / "items.parquet").column("upload_ts").to_numpy()
    _items(
        good,
        drop=("category",),
        topic=pa.array(np.arange(n) % 7, pa.int64()),
        item_id=pa.array(np.arange(100, 100 + n), pa.int64()),
        upload_ts=pa.array((np.round(ts) * 1e9).astype("datetime64[ns]")),
    )
    _npy(good, "item_embeddings.npy", lambda a: a.astype(np.float16))
    c = load_catalogue(good)
    assert c.topics.dtype == np.int32 and c.item_ids.dtype == np.uint64
    np.testing.assert_array_equal(c.categories, 0)
    np.testing.assert_array_equal(c.upload_ts, np.round(ts))
    assert c.item_embeddings.dtype == np.float32


def test_in_memory_validation(tmp_path) -> None:
    a = small_arrays()
    with pytest.raises(ValueError, match="topic has 49 rows, item_id has 50"):
        Catalogue.from_arrays(**{**a, "topics": a["topics"][:-1]})
    with pytest.raises(ValueError, match="together"):
        Catalogue.from_arrays(**{**a, "user_embeddings": None})
    with pytest.raises(ValueError, match="together"):
        Catalogue.from_arrays(**{**a, "creator_ids": None})
    with pytest.raises(ValueError, match="4 columns, the items' dim is 8"):
        Catalogue.from_arrays(**{**a, "user_embeddings": np.zeros((5, 4), np.float32)})
    with pytest.raises(ValueError, match="user embeddings have 4 rows but there are 5 users"):
        Catalogue.from_arrays(**{**a, "user_embeddings": np.zeros((4, 8), np.float32)})
    with pytest.raises(ValueError, match="item embeddings have 49 rows but there are 50 items"):
        Catalogue.from_arrays(**{**a, "item_embeddings": a["item_embeddings"][:-1]})
    with pytest.raises(ValueError, match="must be 2-D"):
        Catalogue.from_arrays(**{**a, "item_embeddings": np.zeros(50, np.float32)})
    with pytest.raises(ValueError, match="NaN or Inf at row 0, column 0"):
        Catalogue.from_arrays(**{**a, "item_embeddings": np.full((50, 8), np.nan, np.float32)})
    with pytest.raises(ValueError, match="user_ids\\[1\\]"):
        Catalogue.from_arrays(**{**a, "user_ids": ["a", 5, "c", "d", "e"]})
    with pytest.raises(ValueError, match="creator_authority has 2 rows, creator_id has 3"):
        Catalogue.from_arrays(**{**a, "creator_authority": np.array([0.5, 0.25], dtype=np.float32)})
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="duplicate"):
        save_catalogue(tmp_path / "c", **{**a, "item_ids": np.ones(50, np.uint64)})
    assert os.listdir(tmp_path) == []  # validation happens before anything is written


# ---------------------------------------------------------------- into a pipeline


class _Recorder:
    def __init__(self) -> None:
        self.items: list[tuple[int, bool]] = []
        self.ids: list[np.ndarray] = []
        self.ts: list[np.ndarray] = []
        self.emb: list[np.ndarray] = []
        self.batches: list[dict] = []

    def load_items(self, ids, emb, topics, creators, cats, ts, index=True):
        assert emb.dtype == np.float32 and emb.flags.c_contiguous and len(emb) == len(ids)
        self.items.append((len(ids), index))
        self.ids.append(np.array(ids))
        self.ts.append(np.array(ts))
        self.emb.append(emb)

    def load_batch(
        self,
        version,
        as_of,
        user_ids=None,
        user_embeddings=None,
        creator_ids=None,
        creator_authority=None,
    ):
        assert (user_ids is None) == (user_embeddings is None)
        assert user_ids is None or len(user_ids) == len(user_embeddings)
        self.batches.append(
            {
                "version": version,
                "as_of": as_of,
                "users": user_ids,
                "creators": creator_ids,
                "authority": creator_authority,
            }
        )


def test_apply_catalogue_chunks_items_and_swaps_one_batch_snapshot(catdir) -> None:
    c = load_catalogue(catdir)
    rec = _Recorder()
    got = apply_catalogue(rec, c, index=False, batch=700)
    assert rec.items == [(700, False), (700, False), (600, False)]
    # the batch tier is published once, whole (users and creators together)
    assert len(rec.batches) == 1
    b = rec.batches[0]
    assert len(b["users"]) == c.n_users and b["as_of"] == c.as_of
    assert got == {"items": 2000, "users": c.n_users, "creators": c.n_creators}
    # every item once, with its own row, in upload-time order (the fresh tier's fast path)
    ids, ts = np.concatenate(rec.ids), np.concatenate(rec.ts)
    assert np.all(np.diff(ts) >= 0)
    np.testing.assert_array_equal(np.sort(ids), np.sort(c.item_ids))
    row = {int(i): r for r, i in enumerate(c.item_ids)}
    first = [row[int(i)] for i in rec.ids[1][:5]]
    np.testing.assert_array_equal(rec.emb[1][:5], c.item_embeddings[first])
    np.testing.assert_array_equal(rec.ts[1][:5], c.upload_ts[first])
    rec = _Recorder()
    seen = []
    got = apply_catalogue(rec, c, batch=5000, progress=seen.append)
    assert rec.items == [(2000, True)] and seen == [2000]
    assert got["creators"] == c.n_creators > 0
    np.testing.assert_array_equal(rec.batches[0]["creators"], c.creator_ids)
    np.testing.assert_array_equal(rec.batches[0]["authority"], c.creator_authority)
    with pytest.raises(ValueError, match="batch must be > 0"):
        apply_catalogue(rec, c, batch=0)


def test_apply_catalogue_streams_a_time_sorted_catalogue_without_copies(tmp_path) -> None:
    a = small_arrays(n=300)
    order = np.argsort(a["upload_ts"])
    for k in ("item_ids", "item_embeddings", "topics", "creators", "upload_ts", "categories"):
        a[k] = a[k][order]
    c = load_catalogue(save_catalogue(tmp_path / "c", **a))
    rec = _Recorder()
    apply_catalogue(rec, c, batch=128)
    assert [n for n, _ in rec.items] == [128, 128, 44]
    assert all(np.shares_memory(e, c.item_embeddings) for e in rec.emb)
    np.testing.assert_array_equal(np.concatenate(rec.ids), c.item_ids)


def test_apply_catalogue_into_a_real_pipeline_indexes_items(catdir) -> None:
    from fyp_core import FeedPipeline, MlpRanker, Reranker, TrafficSplit
    from fyp_core.synth import TASKS, demo_ranker_weights

    c = load_catalogue(catdir)
    w, b, o = demo_ranker_weights(c.dim)
    pipe = FeedPipeline(
        HnswIndex(c.dim, metric="ip", ef_construction=32, capacity=4096),
        MlpRanker(w, b, outputs=o, task_names=list(TASKS)),
        Reranker({"window": 20}),
        TrafficSplit(0.05),
        config={"candidates": 100},
        user_token_key=b"0123456789abcdef",
    )
    apply_catalogue(pipe, c, index=True, batch=512)
    assert pipe.stats()["index_items"] == 2000
    r = pipe.feed(c.user_ids[0], "r1", n=10, now=NOW)
    assert len(r) == 10 and set(r.item_ids.tolist()) <= set(c.item_ids.tolist())
    other = load_catalogue(
        save_catalogue(Path(catdir).parent / "dim8", **small_arrays()), mmap=False
    )
    with pytest.raises(ValueError):  # 8-d catalogue into a 64-d pipeline
        apply_catalogue(pipe, other)
    pipe.close()


def test_catalogue_pipeline_serves_like_the_world_pipeline(world, catdir) -> None:
    """One code path: the pipeline built from the exported catalogue answers as the one built
    from the world itself (same index, items, user embeddings)."""
    from_cat = build_pipeline(load_catalogue(catdir), args(), None)
    from_world = build_pipeline(world, args(), None)
    overlap = []
    for u in range(0, 150, 15):
        a = from_cat.feed(f"user-{u}", f"r{u}", n=20, now=NOW)
        b = from_world.feed(f"user-{u}", f"r{u}", n=20, now=NOW)
        assert set(a.item_ids.tolist()) <= set(world.item_ids.tolist())
        assert a.sources == b.sources  # exploration is a pure function of (user, request, slot)
        overlap.append(len(set(a.item_ids.tolist()) & set(b.item_ids.tolist())) / 20)
    # an index built twice over the same data may differ slightly if built in parallel
    assert np.mean(overlap) >= 0.9, overlap
    from_cat.close()
    from_world.close()


# ---------------------------------------------------------------- CLI


def test_cli_serve_catalogue_answers_feed_from_the_catalogue(catdir) -> None:
    """`fyp-core serve --catalogue DIR` as a user runs it: a real process on a free port."""
    import httpx
    from _serve_proc import ServeProcess

    c = load_catalogue(catdir)
    srv = ServeProcess(["--catalogue", str(catdir), "--ef", "200"])
    try:
        srv.wait_ready()
        body = {"user_id": c.user_ids[3], "request_id": "q1", "n": 10}
        with httpx.Client(timeout=30.0) as client:
            r = client.post(f"{srv.base}/feed", json=body)
            health = client.get(f"{srv.base}/healthz").json()
        assert r.status_code == 200, r.text
        ids = [s["item_id"] for s in r.json()["slots"]]
        assert len(ids) == 10 and set(ids) <= set(c.item_ids.tolist())
        assert health["items"] == c.n_items  # --items ignored with --catalogue
    finally:
        srv.signal()
        srv.wait()
    assert "loaded catalogue" in srv.output()


def test_cli_serve_bad_catalogue_is_a_message(tmp_path, capsys) -> None:
    assert main(["serve", "--catalogue", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_export_and_check(tmp_path, capsys) -> None:
    d = str(tmp_path / "exp")
    assert (
        main(
            [
                "catalogue",
                "export",
                d,
                "--items",
                "300",
                "--users",
                "20",
                "--dim",
                "16",
                "--now",
                "1.8e9",
                "--no-creators",
            ]
        )
        == 0
    )
    c = load_catalogue(d)
    assert (c.n_items, c.dim, c.as_of, c.creator_ids) == (300, 16, 1.8e9, None)
    assert main(["catalogue", "export", d, "--items", "300"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["catalogue", "export", d, "--items", "200", "--users", "20", "--overwrite"]) == 0
    assert main(["catalogue", "check", d]) == 0
    assert "ok, format version 1, 200 items" in capsys.readouterr().out
    _manifest(Path(d), version=7)
    assert main(["catalogue", "check", d]) == 2
    assert "unknown catalogue format version 7" in capsys.readouterr().err
    assert main(["catalogue"]) == 2


# ---------------------------------------------------------------- fuzzing the manifest

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_KEYS = ["format", "version", "dim", "n_items", "n_users", "as_of", "created_by"]


@st.composite
def _manifests(draw) -> bytes:
    valid = {
        "format": "fyp_core.catalogue",
        "version": 1,
        "dim": 8,
        "n_items": 50,
        "n_users": 5,
        "as_of": NOW,
        "created_by": "t",
    }
    kind = draw(st.sampled_from(["edit", "json", "bytes", "truncate"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "json":
        return json.dumps(draw(_json)).encode()
    text = json.dumps(valid).encode()
    if kind == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    m = dict(valid)
    for k in draw(st.lists(st.sampled_from(_KEYS), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()):
            m.pop(k)
        else:
            m[k] = draw(_json)
    return json.dumps(m).encode()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return save_catalogue(tmp_path_factory.mktemp("fz") / "c", **small_arrays())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_manifests())
def test_corrupted_manifest_never_crashes(fuzz_dir, raw) -> None:
    (fuzz_dir / "manifest.json").write_bytes(raw)
    try:
        c = load_catalogue(fuzz_dir)
    except (ValueError, FileNotFoundError):
        return
    assert (c.dim, c.n_items, c.n_users) == (8, 50, 5)
