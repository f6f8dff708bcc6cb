"""fyp_core.HnswIndex against brute force: recall for every metric, exclude, padding, remove,
replace, churn, rebuild under load, save/load round trip and corrupt files."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fyp_core
from fyp_core import CorruptFileError, HnswIndex

PAD = np.uint64(2**64 - 1)


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """Gaussian mixture with unequal cluster sizes, L2-normalised (like learned embeddings)."""
    rng = np.random.default_rng(seed)
    centers = 0.5 * rng.standard_normal((clusters, dim))  # overlapping, like real embeddings
    w = 1.0 / np.arange(1, clusters + 1)
    c = rng.choice(clusters, size=n, p=w / w.sum())
    x = centers[c] + 0.3 * rng.standard_normal((n, dim)) * np.linspace(1.5, 0.2, dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def exact(data: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    d64, q64 = data.astype(np.float64), queries.astype(np.float64)
    if metric == "l2":
        dist = (q64**2).sum(1)[:, None] - 2 * q64 @ d64.T + (d64**2).sum(1)[None, :]
    elif metric == "cosine":
        dn = d64 / np.linalg.norm(d64, axis=1, keepdims=True)
        qn = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
        dist = 1 - qn @ dn.T
    else:
        dist = 1 - q64 @ d64.T
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered(6000, 32, seed=1)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return clustered(200, 32, seed=2)


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_recall_against_brute_force(metric, data, queries):
    x = data.copy()
    if metric != "ip":
        x *= np.random.default_rng(3).uniform(0.5, 2.0, size=(len(x), 1)).astype(np.float32)
    ix = HnswIndex(32, metric=metric, m=16, ef_construction=100)
    ids = np.arange(len(x), dtype=np.uint64) * 7 + 3
    ix.add(ids, x)
    assert len(ix) == len(x)
    found, dist = ix.search(queries, 10, ef=200)
    assert found.dtype == np.uint64 and dist.dtype == np.float32 and found.shape == (200, 10)
    truth = ids[exact(x, queries, 10, metric)]
    assert recall(found, truth) >= 0.97
    assert (np.diff(dist, axis=1) >= 0).all()
    # the distances are the metric's, computed in float64 for the returned ids
    row = found[0]
    v = x[((row - 3) // 7).astype(np.int64)].astype(np.float64)
    q = queries[0].astype(np.float64)
    if metric == "l2":
        want = ((v - q) ** 2).sum(1)
    elif metric == "cosine":
        want = 1 - v @ q / (np.linalg.norm(v, axis=1) * np.linalg.norm(q))
    else:
        want = 1 - v @ q
    np.testing.assert_allclose(dist[0], want, atol=2e-5)


def test_threads_one_and_many_agree(data, queries):
    ix = HnswIndex(32, seed=5)
    ix.add(np.arange(len(data)), data, threads=1)
    a = ix.search(queries, 10, ef=50, threads=1)
    b = ix.search(queries, 10, ef=50, threads=2)
    np.testing.assert_array_equal(a[0], b[0])
    # same seed + single-threaded build = same graph
    ix2 = HnswIndex(32, seed=5)
    ix2.add(np.arange(len(data)), data, threads=1)
    np.testing.assert_array_equal(ix2.search(queries, 10, ef=50)[0], a[0])


def test_padding_k_larger_than_index_and_empty():
    ix = HnswIndex(4, metric="l2")
    ids, dist = ix.search(np.ones((2, 4), np.float32), 3)
    assert (ids == PAD).all() and np.isinf(dist).all()
    ix.add([10, 11], np.eye(4, dtype=np.float32)[:2])
    ids, dist = ix.search(np.eye(4, dtype=np.float32)[:1], 5)
    assert ids[0, :2].tolist() == [10, 11]
    assert (ids[0, 2:] == PAD).all() and np.isinf(dist[0, 2:]).all()


def test_exclude_inside_search_still_returns_k(data):
    ix = HnswIndex(32)
    ix.add(np.arange(len(data)), data)
    q = data[:3]
    truth = exact(data, q, 400, "ip")
    seen = truth[0, :300]  # the user has seen the 300 nearest items
    ids, _ = ix.search(q[:1], 10, ef=64, exclude=seen)
    assert len(set(ids[0].tolist()) & set(seen.tolist())) == 0
    assert (ids != PAD).all()
    assert recall(ids, truth[:1, 300:310]) >= 0.8
    # one exclude list per query
    ids, _ = ix.search(q, 10, exclude=[truth[0, :50], None, truth[2, :5]])
    assert not set(ids[0].tolist()) & set(truth[0, :50].tolist())
    assert ids[1, 0] == truth[1, 0]
    assert not set(ids[2].tolist()) & set(truth[2, :5].tolist())
    with pytest.raises(ValueError, match="per-query"):
        ix.search(q, 10, exclude=[[1], [2]])


def test_remove_is_immediate_and_replace(data):
    ix = HnswIndex(32)
    ix.add(np.arange(1000), data[:1000])
    assert 5 in ix and 5000 not in ix and -1 not in ix
    assert ix.search(data[5:6], 1)[0][0, 0] == 5
    assert ix.remove([5, 123456]) == 1
    assert 5 not in ix and len(ix) == 999
    assert 5 not in ix.search(data[5:6], 100)[0]
    ix.add([7], data[5:6])  # replace id 7's vector
    ids, dist = ix.search(data[5:6], 100)
    assert ids[0, 0] == 7 and dist[0, 0] < 1e-5
    assert len(set(ids[0].tolist())) == 100
    np.testing.assert_array_equal(ix.get_vector(7), data[5])
    with pytest.raises(KeyError):
        ix.get_vector(5)
    # duplicate ids in one batch: the last row wins
    ix.add([9, 9], data[10:12])
    np.testing.assert_array_equal(ix.get_vector(9), data[11])


def test_churn_keeps_recall(queries):
    """Replace 30% of the items (remove + add new ones): recall@10 at the same ef stays within
    one point of a fresh build on the same final items."""
    n, dim, ef = 8000, 32, 48
    pool = clustered(n + 3000, dim, seed=11)
    # single-threaded builds are deterministic, so this comparison is not a coin toss
    churned = HnswIndex(dim, seed=1)
    churned.add(np.arange(n), pool[:n], threads=1)
    rng = np.random.default_rng(0)
    gone = rng.choice(n, size=int(0.3 * n), replace=False)
    for chunk in np.array_split(gone, 10):  # in waves, as a serving host would see it
        churned.remove(chunk)
    new_ids = np.arange(n, n + len(gone))
    churned.add(new_ids, pool[n : n + len(gone)], threads=1)
    live = np.setdiff1d(np.arange(n + len(gone)), gone)
    fresh = HnswIndex(dim, seed=1)
    fresh.add(live, pool[live], threads=1)
    assert len(churned) == len(fresh) == len(live)
    truth = live[exact(pool[live], queries, 10, "ip")]
    r_churn = recall(churned.search(queries, 10, ef=ef)[0], truth)
    r_fresh = recall(fresh.search(queries, 10, ef=ef)[0], truth)
    assert r_churn >= r_fresh - 0.01, (r_churn, r_fresh)
    assert abs(churned.recall_probe(queries, k=10, ef=ef) - r_churn) < 1e-9
    stats = churned.stats()
    assert stats["live"] == len(live)
    # removed slots were unlinked and reused by the new items (consolidation)
    assert stats["tombstones"] < max(64, len(live) // 10), stats
    assert stats["slots"] <= 1.15 * len(live), stats
    churned.rebuild(threads=1)
    assert churned.stats()["tombstones"] == 0
    # The rebuilt graph inserts the live items in slot order, not in the fresh build's order, so
    # it is a different (equally valid) graph: over 200 queries at ef=48 that alone moves recall
    # by about +-1.5 points (a 0.01 bound failed once in CI), hence the wider bound here.
    assert recall(churned.search(queries, 10, ef=ef)[0], truth) >= r_fresh - 0.03


def test_recall_probe_on_own_items(data):
    ix = HnswIndex(32)
    ix.add(np.arange(len(data)), data)
    assert ix.recall_probe(50, k=10, ef=100) >= 0.97
    assert ix.recall_probe(data[:20], k=5) >= 0.9
    with pytest.raises(ValueError):
        HnswIndex(4).recall_probe(10)


def test_rebuild_in_background_loses_no_insert(data):
    ix = HnswIndex(32)
    ix.add(np.arange(3000), data[:3000])
    ix.remove(np.arange(0, 3000, 3))
    ix.rebuild(wait=False)
    errors = []

    def writer():
        try:
            for i in range(3000, 4000, 50):
                ix.add(np.arange(i, i + 45), data[i : i + 45])
                for j in range(i + 45, i + 50):  # one row: upper levels linked after the call
                    ix.add([j], data[j : j + 1])
            ix.remove([1, 2])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    while ix.rebuilding or t.is_alive():
        ids, _ = ix.search(data[3:4], 5)
        assert (ids != PAD).all()
    t.join()
    assert not errors
    want = set(range(4000)) - set(range(0, 3000, 3)) - {1, 2}
    assert len(ix) == len(want)
    assert all(i in ix for i in (4, 3999, 3500)) and 1 not in ix and 2 not in ix
    ids, dist = ix.search(data[3999:4000], 1, ef=64)
    assert ids[0, 0] == 3999 and dist[0, 0] < 1e-5
    found, _ = ix.search(data[3000:4000], 1, ef=64)
    assert (found[:, 0] == np.arange(3000, 4000)).mean() >= 0.99


def test_save_load_round_trip(tmp_path, data, queries):
    ix = HnswIndex(32, metric="cosine", m=8, ef_construction=64, seed=3)
    ix.add(np.arange(2000) * 11, data[:2000])
    ix.remove([0, 11, 22])
    p = tmp_path / "index.hnsw"
    ix.save(p)
    back = HnswIndex.load(str(p))
    assert (back.dim, back.metric, back.m, back.ef_construction) == (32, "cosine", 8, 64)
    assert len(back) == 1997
    a, b = ix.search(queries, 10, ef=40), back.search(queries, 10, ef=40)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert 11 not in back and 33 in back
    # still writable after load
    back.add([1], data[2500:2501])
    assert back.search(data[2500:2501], 1)[0][0, 0] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["index.hnsw"]  # no temp files left


def test_corrupt_truncated_foreign_files(tmp_path, data):
    ix = HnswIndex(32)
    ix.add(np.arange(500), data[:500])
    p = tmp_path / "i.hnsw"
    ix.save(p)
    raw = p.read_bytes()
    bad = tmp_path / "bad"
    for blob in (raw[: len(raw) // 2], raw[:20], b"", b"not an index at all" * 10):
        bad.write_bytes(blob)
        with pytest.raises(CorruptFileError):
            HnswIndex.load(bad)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x01
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CorruptFileError, match="checksum"):
        HnswIndex.load(bad)
    v2 = bytearray(raw)
    v2[8] = 99
    bad.write_bytes(bytes(v2))
    with pytest.raises(CorruptFileError, match="version"):
        HnswIndex.load(bad)
    assert issubclass(CorruptFileError, ValueError)
    with pytest.raises(OSError):
        HnswIndex.load(tmp_path / "missing.hnsw")
    with pytest.raises(OSError):
        ix.save(tmp_path / "no" / "such" / "dir" / "x.hnsw")


def test_repr_and_properties():
    ix = HnswIndex(8, metric="l2", m=8)
    assert "dim=8" in repr(ix) and ix.simd in ("avx512f", "avx2+fma", "scalar")
    assert fyp_core.HnswIndex is HnswIndex


def test_converts_dtype_and_layout():
    ix = HnswIndex(4, metric="l2")
    x = np.arange(40, dtype=np.float64).reshape(10, 4)
    ix.add(np.arange(10, dtype=np.int32), x)  # float64 + int32: converted once
    xf = np.asfortranarray(x)  # non-contiguous: converted
    ids, _ = ix.search(xf[:3], 1)
    assert ids[:, 0].tolist() == [0, 1, 2]
    ids, _ = ix.search(x[:, :][::2], 1)  # strided rows
    assert ids[:, 0].tolist() == [0, 2, 4, 6, 8]
    ids, _ = ix.search([0.0, 1.0, 2.0, 3.0], 1)  # a 1-D list is one query
    assert ids.shape == (1, 1) and ids[0, 0] == 0
