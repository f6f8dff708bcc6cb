"""Property tests of the HnswIndex boundary: bad shapes, NaN/Inf, dtypes, k, ef, lengths. Every
bad input raises a clear exception (never a crash); good input gives well-formed results."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fyp_core import HnswIndex

PAD = 2**64 - 1
DIM = 6
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def small_index() -> HnswIndex:
    rng = np.random.default_rng(0)
    ix = HnswIndex(DIM, metric="l2", m=4, ef_construction=16)
    ix.add(np.arange(20), rng.standard_normal((20, DIM)).astype(np.float32))
    return ix


IX = small_index()
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@SETTINGS
@given(
    arr=st.one_of(
        hnp.arrays(
            dtype=st.sampled_from([np.float32, np.float64, np.float16]),
            shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=8),
            elements=floats,
        ),
        hnp.arrays(
            dtype=st.sampled_from([np.int32, np.int64, np.uint8]),
            shape=hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=8),
            elements=st.integers(0, 5),
        ),
    ),
    k=st.integers(-3, 40),
    ef=st.one_of(st.none(), st.integers(-5, 100)),
)
# finite, but its squared l2 distance to anything (2^128) overflows float32: refused
@example(arr=np.array([2.0**64, 0, 0, 0, 0, 0], np.float32), k=1, ef=None)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # hypothesis casting to float16
def test_search_never_crashes(arr, k, ef):
    try:
        ids, dist = IX.search(arr, k, ef=ef)
    except (ValueError, TypeError) as e:
        assert str(e)
        return
    assert k >= 1 and (ef is None or ef >= 1)
    assert ids.shape == dist.shape and ids.shape[1] == k
    assert np.isfinite(arr.astype(np.float64)).all()
    live = ids != np.uint64(PAD)
    assert (ids[live] < 20).all()
    assert np.isinf(dist[~live]).all() and np.isfinite(dist[live]).all()
    # min(k, len) real results per row
    assert (live.sum(axis=1) == min(k, len(IX))).all()


@SETTINGS
@given(
    n_ids=st.integers(0, 6),
    rows=st.integers(0, 6),
    cols=st.integers(1, 9),
    bad=st.sampled_from([None, np.nan, np.inf, -np.inf]),
)
def test_add_validates_everything(n_ids, rows, cols, bad):
    ix = HnswIndex(DIM, metric="cosine")
    x = np.ones((rows, cols), dtype=np.float32)
    if bad is not None and rows:
        x[rows - 1, 0] = bad
    ok = n_ids == rows and (cols == DIM or rows == 0) and (bad is None or rows == 0)
    if ok:
        ix.add(np.arange(n_ids), x)
        assert len(ix) == rows
    else:
        with pytest.raises(ValueError):
            ix.add(np.arange(n_ids), x)
        assert len(ix) == 0  # nothing half-added


@pytest.mark.parametrize(
    "call",
    [
        lambda ix: ix.add(np.array([-1]), np.ones((1, DIM))),
        lambda ix: ix.add(np.array([2**64 - 1], dtype=np.uint64), np.ones((1, DIM))),
        lambda ix: ix.add(np.array(["a"]), np.ones((1, DIM))),
        lambda ix: ix.add([1], np.array([["x"] * DIM])),
        lambda ix: ix.add([1], np.zeros((1, DIM))),  # cosine needs a non-zero vector
        lambda ix: ix.search(np.ones((1, DIM)), 0),
        lambda ix: ix.search(np.ones((1, DIM)), 5, ef=-1),
        lambda ix: ix.search(np.ones((1, DIM)), 5, threads=0),
        lambda ix: ix.search(np.ones((2, DIM + 1)), 5),
        lambda ix: ix.search(np.ones((2, 2, DIM)), 5),
        lambda ix: ix.remove(np.array([[1, 2]])),
        lambda ix: ix.recall_probe(10, k=0),
        lambda ix: HnswIndex(0),
        lambda ix: HnswIndex(4, metric="dot"),
        lambda ix: HnswIndex(4, m=1),
        lambda ix: HnswIndex(4, m=-3),
        lambda ix: HnswIndex(4, ef_construction=0),
    ],
)
def test_bad_arguments_raise(call):
    ix = HnswIndex(DIM, metric="cosine")
    ix.add([1, 2], np.eye(DIM, dtype=np.float32)[:2])
    with pytest.raises((ValueError, TypeError, OverflowError)):
        call(ix)
    assert len(ix) == 2


def test_empty_index_searches_pad():
    ix = HnswIndex(DIM)
    ids, dist = ix.search(np.ones((3, DIM), np.float32), 4)
    assert (ids == np.uint64(PAD)).all() and np.isinf(dist).all()
    ids, dist = ix.search(np.ones((0, DIM), np.float32), 4)
    assert ids.shape == (0, 4)
