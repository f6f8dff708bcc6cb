"""TrafficSplit.assign_batch vs a pure-Python xxhash loop and a numpy-vectorised Python version.

Same inputs, one process, one thread. Prints slot decisions/s and ratios; `--quick` for CI.
    python benches/compare_split.py [--quick] [--n N] [--reps R]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import xxhash

from fyp_core import TrafficSplit

RATE = 0.05


def python_loop(users: list[str], reqs: list[str], slots: list[int]) -> np.ndarray:
    out = np.empty(len(slots), dtype=bool)
    for i, (u, r, s) in enumerate(zip(users, reqs, slots)):
        h = xxhash.xxh3_64_intdigest(f"fyp\x1f{u}\x1f{r}\x1f{s}".encode())
        out[i] = (h >> 11) * 2.0**-53 < RATE
    return out


def numpy_vectorised(users: list[str], reqs: list[str], slots: np.ndarray) -> np.ndarray:
    # The best a numpy user can do: vectorise key building and thresholding; xxh3 itself still
    # runs once per key (numpy has no hash kernel).
    keys = np.char.add(
        np.char.add(np.char.add("fyp\x1f", np.array(users)), "\x1f"),
        np.char.add(np.char.add(np.array(reqs), "\x1f"), slots.astype(str)),
    )
    h = np.fromiter(
        (xxhash.xxh3_64_intdigest(k.encode()) for k in keys.tolist()),
        dtype=np.uint64,
        count=len(keys),
    )
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53 < RATE


def timed(fn, reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    a = ap.parse_args()
    n = a.n or (50_000 if a.quick else 1_000_000)
    reps = a.reps or (3 if a.quick else 7)
    n_py = min(n, 20_000 if a.quick else 200_000)
    rng = np.random.default_rng(0)
    users = [f"tok-{x:032x}" for x in rng.integers(0, 2**62, size=n // 20).repeat(20)]
    reqs = [f"req-{i // 20:010d}" for i in range(n)]
    slots = np.tile(np.arange(20, dtype=np.int64), n // 20)
    n = len(slots)
    split = TrafficSplit(RATE)

    t_lists, got = timed(lambda: split.assign_batch(users, reqs, slots), reps)
    # Hash work alone: per-request strings broadcast over a large slot array (no per-row str
    # conversion, every slot still hashes its full key).
    big = np.arange(n, dtype=np.int64)
    t_core, _ = timed(lambda: split.assign_batch(users[0], reqs[0], big), reps)
    t_loop, ref = timed(
        lambda: python_loop(users[:n_py], reqs[:n_py], slots[:n_py].tolist()), max(1, reps // 2)
    )
    t_np, ref_np = timed(
        lambda: numpy_vectorised(users[:n_py], reqs[:n_py], slots[:n_py]), max(1, reps // 2)
    )
    assert np.array_equal(got[:n_py], ref) and np.array_equal(ref, ref_np), (
        "implementations disagree"
    )

    rate = lambda count, t: count / t / 1e6  # noqa: E731
    print(f"assign_batch, n={n:,}, reps={reps} (median), 1 thread")
    print(f"  fyp_core core (broadcast keys)   {rate(n, t_core):8.1f} M slots/s")
    print(
        f"  fyp_core lists of str            {rate(n, t_lists):8.1f} M slots/s"
        "  (incl. str conversion)"
    )
    print(f"  python xxhash loop               {rate(n_py, t_loop):8.2f} M slots/s")
    print(f"  numpy-vectorised python          {rate(n_py, t_np):8.2f} M slots/s")
    print(f"  ratio core / python loop         {rate(n, t_core) / rate(n_py, t_loop):8.1f}x")
    print(f"  ratio lists / python loop        {rate(n, t_lists) / rate(n_py, t_loop):8.1f}x")
    print(f"  ratio lists / numpy-vectorised   {rate(n, t_lists) / rate(n_py, t_np):8.1f}x")


if __name__ == "__main__":
    main()
