"""fyp_core.HnswIndex traversal codes: half precision (`quantize="fp16"`) recall against brute
force on clustered data (where the 8-bit codes lose it), 4-bit codes (`"sq4"`) on
high-dimensional embeddings, the default `"auto"` choosing between 8-bit and fp16 codes from
the data, exact returned distances, the `quantize` argument, save/load of the mode, and
inserts racing searches."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fyp_core import HnswIndex


def tight_clusters(n: int, dim: int, seed: int, spread: float = 0.05) -> np.ndarray:
    """Many tight clusters whose centres span each dimension's range: neighbours inside a
    cluster differ by a few 8-bit steps of the global range (the case sq8 cannot order)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((200, dim))
    c = rng.integers(0, len(centers), size=n)
    x = centers[c] + spread * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def xq() -> tuple[np.ndarray, np.ndarray]:
    # At spread 0.05 (near-duplicates: neighbours' distances differ by about the fp16 rounding)
    # fp16 needs a beam a little above k (ef 10: 0.914 vs 0.985 on floats; ef 16: 0.993 vs 0.995).
    x = tight_clusters(8000, 50, seed=1, spread=0.2)
    q = tight_clusters(8200, 50, seed=1, spread=0.2)[8000:]  # same centres, held-out points
    return x, q


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_fp16_recall_matches_float_traversal_on_clustered_data(metric, xq):
    x, q = xq
    if metric == "l2":
        x = x * np.random.default_rng(2).uniform(0.5, 3.0, size=(len(x), 1)).astype(np.float32)
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    if metric == "l2":
        dist = (q64**2).sum(1)[:, None] - 2 * q64 @ x64.T + (x64**2).sum(1)[None, :]
    else:
        dist = 1 - q64 @ x64.T
    truth = np.argsort(dist, axis=1, kind="stable")[:, :10]
    got = {}
    for mode in ("fp16", "off", "sq8"):
        ix = HnswIndex(50, metric=metric, ef_construction=100, seed=4, quantize=mode)
        ix.add(np.arange(len(x)), x, threads=1)
        assert ix.quantize == mode and ix.quantized == (mode != "off")
        ids, d = ix.search(q, 10, ef=10, threads=1)  # a small beam: recall well below 1
        got[mode] = recall(ids.astype(np.int64), truth)
        # returned distances are the float32 ones (exact re-rank), not the code estimates
        want = np.take_along_axis(dist, ids.astype(np.int64), axis=1)
        np.testing.assert_allclose(d, want, atol=3e-5 * max(1.0, float(np.abs(want).max())))
        assert np.all(np.diff(d, axis=1) >= 0)
    assert got["fp16"] >= 0.8 and got["fp16"] >= got["off"] - 0.01, got


def test_quantize_argument():
    assert HnswIndex(8).quantize == "auto" and HnswIndex(8, quantize=None).quantize == "auto"
    assert not HnswIndex(8).quantized and HnswIndex(8).codes is None  # chosen at 1000 items
    assert HnswIndex(8, quantize="fp16").quantized and HnswIndex(8, quantize="fp16").codes == "fp16"
    assert HnswIndex(8, quantize=True).quantize == "sq8"
    assert not HnswIndex(8, quantize=True).quantized  # fitted at 1000 items
    assert (
        HnswIndex(8, quantize=False).quantize == "off"
        and HnswIndex(8, quantize=False).codes is None
    )
    assert HnswIndex(8, quantize="sq4").quantize == "sq4"
    assert HnswIndex(8, metric="cosine", quantize="sq4").codes is None  # fitted at 1000 items
    for bad in ("fp32", "FP16", "AUTO", "sq2", 1, 0, 2.0, b"fp16"):
        with pytest.raises(ValueError, match="quantize"):
            HnswIndex(8, quantize=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='"sq4" needs metric "ip" or "cosine"'):
        HnswIndex(8, metric="l2", quantize="sq4")


def test_sq4_recall_matches_8bit_codes_on_embeddings():
    # 4-bit codes on 384-d directions with some structure (a low-rank part, as embeddings have):
    # half the bytes of 8-bit codes, recall at equal ef within a point of them (the beam is
    # re-ranked with the floats), distances exact.
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5100, 32)) @ rng.standard_normal((32, 384))
    x += 3.0 * rng.standard_normal((5100, 384))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    base, q = x[:5000], x[5000:]
    truth = np.argsort(-(q.astype(np.float64) @ base.T.astype(np.float64)), axis=1)[:, :10]
    got = {}
    for mode in ("sq8", "sq4"):
        ix = HnswIndex(384, ef_construction=100, seed=3, quantize=mode, deterministic=True)
        ix.add(np.arange(5000), base)
        assert ix.codes == mode and ix.quantized
        ids, d = ix.search(q, 10, ef=32)
        got[mode] = recall(ids.astype(np.int64), truth)
        exact = 1 - np.sum(base[ids.astype(np.int64)] * q[:, None, :], axis=2)
        np.testing.assert_allclose(d, exact, atol=2e-5)
    assert got["sq4"] >= 0.9 and got["sq4"] >= got["sq8"] - 0.01, got


def test_auto_chooses_8bit_codes_only_where_they_keep_recall():
    # Random directions: 8-bit codes keep the neighbours. Tight clusters (spread 0.05): they do
    # not, and "auto" takes fp16, whose recall at equal ef stays that of an fp16 index.
    rng = np.random.default_rng(3)
    flat = rng.standard_normal((6100, 50)).astype(np.float32)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    tight = tight_clusters(6100, 50, seed=2, spread=0.05)
    for x, want in ((flat, "sq8"), (tight, "fp16")):
        base, q = x[:6000], x[6000:]
        truth = np.argsort(-(q.astype(np.float64) @ base.T.astype(np.float64)), axis=1)[:, :10]
        got = {}
        for mode in ("auto", want):
            ix = HnswIndex(50, ef_construction=100, seed=5, quantize=mode)
            ix.add(np.arange(600), base[:600])
            assert ix.codes == ("fp16" if mode == "fp16" else None)  # 8-bit: fitted at 1000
            ix.add(np.arange(600, 6000), base[600:])  # crosses 1000 items: chooses, then builds
            assert ix.codes == want and ix.quantized
            ids, d = ix.search(q, 10, ef=64)
            got[mode] = recall(ids.astype(np.int64), truth)
            exact = 1 - np.sum(base[ids[:, 0].astype(np.int64)] * q, axis=1)
            np.testing.assert_allclose(d[:, 0], exact, atol=2e-5)
        assert got["auto"] >= 0.9 and got["auto"] >= got[want] - 0.02, (want, got)


def test_fp16_values_beyond_half_range_still_search_exactly():
    # |x| > 65504 has no half: codes clip, the float re-rank keeps the order and distances exact
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((300, 16)) * 1e6).astype(np.float32)
    ix = HnswIndex(16, metric="l2", quantize="fp16")
    ix.add(np.arange(300), x)
    ids, d = ix.search(x[:20], 1, ef=300)
    np.testing.assert_array_equal(ids[:, 0], np.arange(20))
    np.testing.assert_array_equal(d[:, 0], 0.0)


@pytest.mark.parametrize("mode", ["auto", "fp16", "sq8", "sq4", "off"])
def test_save_load_keeps_mode_and_answers(tmp_path, xq, mode):
    x, q = xq
    ix = HnswIndex(50, ef_construction=64, seed=3, quantize=mode)
    ix.add(np.arange(3000) * 7, x[:3000])
    ix.remove([0, 7, 14])
    ix.save(tmp_path / "i.hnsw")
    for back in (HnswIndex.load(tmp_path / "i.hnsw"), HnswIndex.load(str(tmp_path / "i.hnsw"))):
        assert back.quantize == mode and back.quantized == (mode != "off")
        a, b = ix.search(q, 10, ef=40), back.search(q, 10, ef=40)
        assert back.codes == ix.codes
        np.testing.assert_array_equal(a[0], b[0])  # the saved codes and 8-bit ranges
        np.testing.assert_array_equal(a[1], b[1])
        back.add([1], x[5000:5001])  # inserts after load are encoded too
        assert back.search(x[5000:5001], 1)[0][0, 0] == 1


@pytest.mark.parametrize("mode", ["auto", "sq4"])
def test_codes_concurrent_insert_and_search(xq, mode):
    # auto chooses 8-bit codes on these clusters (spread 0.2); sq4 is fitted by the first
    # batch. Then two writers encode their rows while two readers search the codes.
    x, q = xq
    ix = HnswIndex(50, ef_construction=64, seed=6, quantize=mode)
    ix.add(np.arange(2000), x[:2000])
    assert ix.codes == ("sq8" if mode == "auto" else "sq4")
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(lo: int, hi: int) -> None:
        try:
            for s in range(lo, hi, 50):
                ix.add(np.arange(s, s + 50), x[s : s + 50], threads=1)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def reader() -> None:
        try:
            while not done.is_set():
                ids, d = ix.search(q[:20], 10, ef=32, threads=1)
                ok = ids != np.uint64(2**64 - 1)
                assert np.all(ids[ok] < 8000)
                want = 1 - np.sum(
                    x[ids[ok].astype(np.int64)] * np.repeat(q[:20], 10, 0)[ok.ravel()], axis=1
                )
                np.testing.assert_allclose(d[ok], want, atol=3e-5)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ws = [threading.Thread(target=writer, args=(2000 + i * 3000, 5000 + i * 3000)) for i in (0, 1)]
    rs = [threading.Thread(target=reader) for _ in range(2)]
    for t in ws + rs:
        t.start()
    for t in ws:
        t.join()
    done.set()
    for t in rs:
        t.join()
    assert not errors, errors[0]
    assert len(ix) == 8000
    ids, _ = ix.search(x[::40], 1, ef=200)
    assert np.mean(ids[:, 0] == np.arange(0, 8000, 40)) >= 0.99
    # A rebuild re-fits on all 8000 rows: sq4 keeps 4-bit codes (new ranges); auto decides
    # again, and at this density 8-bit codes no longer keep the neighbours.
    ix.rebuild()
    assert ix.codes == ("fp16" if mode == "auto" else "sq4")
    ids, _ = ix.search(x[::40], 1, ef=200)
    assert np.mean(ids[:, 0] == np.arange(0, 8000, 40)) >= 0.99
