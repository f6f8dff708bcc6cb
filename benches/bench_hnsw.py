"""pytest-benchmark suite for fyp_core.HnswIndex (single query, batch, insert, K=1000).

    pytest benches/bench_hnsw.py -o python_files="bench_*.py"

Data: the same anisotropic Gaussian mixture as compare_hnsw.py, at a small size (20k x 64) so
the suite is quick; peer comparisons live in compare_hnsw.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from compare_hnsw import make_data  # noqa: E402

import fyp_core  # noqa: E402

N, DIM = 20_000, 64


@pytest.fixture(scope="module")
def built():
    data, queries = make_data(N, 256, DIM, seed=3)
    ix = fyp_core.HnswIndex(DIM, metric="ip", m=16, ef_construction=200)
    ix.add(np.arange(N), data)
    return ix, data, queries


def test_search_one_query_ef64(benchmark, built):
    ix, _, q = built
    benchmark(ix.search, q[:1], 10, ef=64, threads=1)


def test_search_batch_256_ef64(benchmark, built):
    ix, _, q = built
    ids, _ = benchmark(ix.search, q, 10, ef=64)
    assert ids.shape == (256, 10)


def test_search_k1000(benchmark, built):
    ix, _, q = built
    ids, _ = benchmark(ix.search, q[:1], 1000, ef=1000, threads=1)
    assert (ids != np.uint64(2**64 - 1)).all()


def test_search_with_exclude(benchmark, built):
    ix, _, q = built
    seen = ix.search(q[:1], 300, ef=300)[0][0]
    benchmark(ix.search, q[:1], 10, ef=64, threads=1, exclude=seen)


def test_insert_one(benchmark, built):
    ix, data, _ = built
    counter = iter(range(10**6, 10**7))
    v = data[:1]

    def one():
        ix.add([next(counter)], v, threads=1)

    benchmark(one)
