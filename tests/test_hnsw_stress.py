"""Concurrency stress: 4 Python threads mix add / search / remove on one HnswIndex (the GIL is
released inside every call, so they really run at once). Afterwards every live id is found as
top-1 with its own vector and no id was ever returned after its removal had completed.

Duration: FYP_STRESS_SECONDS (default 5 s in CI; the issue's full run is 20 s:
`FYP_STRESS_SECONDS=20 pytest tests/test_hnsw_stress.py`)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from fyp_core import HnswIndex

PAD = 2**64 - 1
SECONDS = float(os.environ.get("FYP_STRESS_SECONDS", "5"))
DIM = 24
THREADS = 4
PER_THREAD = 1_000_000  # id ranges: thread t adds ids t*PER_THREAD + 0, 1, 2, ...


def vec(i: int) -> np.ndarray:
    v = np.random.default_rng(i).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def test_concurrent_add_search_remove():
    ix = HnswIndex(DIM, metric="cosine", capacity=64)
    seed_ids = np.arange(500) + THREADS * PER_THREAD
    ix.add(seed_ids, np.stack([vec(int(i)) for i in seed_ids]))
    removed_at: dict[int, float] = {}
    live: dict[int, np.ndarray] = {int(i): vec(int(i)) for i in seed_ids}
    lock = threading.Lock()
    errors: list[str] = []
    counts = {"add": 0, "search": 0, "remove": 0}
    deadline = time.perf_counter() + SECONDS

    def worker(t: int) -> None:
        rng = np.random.default_rng(t)
        next_id = t * PER_THREAD
        mine: list[int] = []
        try:
            while time.perf_counter() < deadline:
                op = rng.random()
                if op < 0.4:
                    # Half the adds are one row (the online insert: upper levels linked after
                    # the call, on the background worker), half small batches.
                    n = 1 if rng.random() < 0.5 else int(rng.integers(2, 20))
                    ids = list(range(next_id, next_id + n))
                    next_id += n
                    vs = np.stack([vec(i) for i in ids])
                    ix.add(ids, vs, threads=1)
                    with lock:
                        live.update(zip(ids, vs))
                    mine.extend(ids)
                    counts["add"] += 1
                elif op < 0.55 and len(mine) > 10:
                    k = int(rng.integers(1, 5))
                    gone = [mine.pop(int(rng.integers(len(mine)))) for _ in range(k)]
                    with lock:
                        for g in gone:
                            live.pop(g, None)
                    ix.remove(gone)
                    now = time.perf_counter()
                    with lock:
                        for g in gone:
                            removed_at[g] = now
                    counts["remove"] += 1
                else:
                    q = rng.standard_normal((int(rng.integers(1, 8)), DIM)).astype(np.float32)
                    t0 = time.perf_counter()
                    ids, dist = ix.search(q, 10, ef=32, threads=1)
                    real = ids != np.uint64(PAD)
                    if not np.isfinite(dist[real]).all() or np.isfinite(dist[~real]).any():
                        errors.append(f"bad distances {dist}")
                    with lock:
                        for r in ids[real].tolist():
                            if r in removed_at and removed_at[r] < t0:
                                errors.append(f"removed id {r} returned")
                            if r >= THREADS * PER_THREAD + 500:
                                errors.append(f"garbage id {r}")
                    counts["search"] += 1
        except Exception as e:  # noqa: BLE001 - any exception is a failure we want reported
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print("ops", counts, "in", time.perf_counter() - deadline + SECONDS, "s")
    assert not errors, errors[:5]
    assert min(counts.values()) > 0, counts
    assert len(ix) == len(live)
    # The queued upper levels of the last one-row adds drain by themselves.
    drained = time.perf_counter() + 10
    while ix.stats()["deferred"] and time.perf_counter() < drained:
        time.sleep(0.01)
    assert ix.stats()["deferred"] == 0 and ix.stats()["deferred_failed"] == 0, ix.stats()
    ids = np.fromiter(live.keys(), dtype=np.uint64)
    vs = np.stack([live[int(i)] for i in ids])
    found, dist = ix.search(vs, 1, ef=400)
    missing = ids[found[:, 0] != ids]
    assert len(missing) == 0, f"{len(missing)} of {len(ids)} live ids not top-1: {missing[:10]}"
    for r in removed_at:
        assert r not in ix
