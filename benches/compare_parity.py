"""parity_report vs the same statistics written the obvious way with scipy + numpy per feature.

Peer per feature: `scipy.stats.ks_2samp(a, b)` (asymp p-value, the cheapest method), `np.quantile`
+ `np.histogram` for PSI, numpy mean/var. Same float32 (rows, features) matrices, one process, one
thread; prints wall times, ratios, and checks both give the same KS and PSI.
    python benches/compare_parity.py [--quick] [--rows N] [--features F] [--reps R]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy.stats import ks_2samp

from fyp_core import parity_report


def scipy_numpy(train: np.ndarray, served: np.ndarray, bins: int = 10) -> list:
    out = []
    for j in range(train.shape[1]):
        a = train[:, j].astype(np.float64)
        b = served[:, j].astype(np.float64)
        ks = ks_2samp(a, b, method="asymp").statistic
        edges = np.unique(np.quantile(a, np.arange(1, bins) / bins))
        full = np.r_[-np.inf, edges, np.inf]
        # right-closed bins like parity_report: count x <= edge via the negated histogram
        e = np.histogram(-a, -full[::-1])[0][::-1] / a.size
        s = np.histogram(-b, -full[::-1])[0][::-1] / b.size
        e, s = np.maximum(e, 1e-4), np.maximum(s, 1e-4)
        psi = float(np.sum((s - e) * np.log(s / e)))
        shift = (b.mean() - a.mean()) / a.std(ddof=1)
        out.append((ks, psi, shift, b.var(ddof=1) / a.var(ddof=1)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if args.quick:
        args.rows, args.features, args.reps = 20_000, 10, 1
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(args.features)]
    train = rng.standard_normal((args.rows, args.features), dtype=np.float32)
    served = rng.standard_normal((args.rows, args.features), dtype=np.float32)
    served[:, 0] += 0.3
    times: dict = {"parity_report": [], "scipy+numpy loop": []}
    for _ in range(args.reps):  # round-robin so load changes hit both
        t = time.perf_counter()
        report = parity_report((train, names), (served, names))
        times["parity_report"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = scipy_numpy(train, served)
        times["scipy+numpy loop"].append(time.perf_counter() - t)
    for fp, (ks, psi, _, _) in zip(report.features, ref):
        assert abs(fp.ks - ks) < 1e-12 and abs(fp.psi - psi) < 1e-9, (fp, ks, psi)
    base = statistics.median(times["parity_report"])
    print(f"{args.rows} rows x {args.features} features, both sides, median of {args.reps}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:18s} {med:8.3f} s   {med / base:5.2f}x parity_report")


if __name__ == "__main__":
    main()
