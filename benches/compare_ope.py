"""OPE estimators side by side on simulated logs with a known target value, and the vectorised
estimators against a straightforward per-impression Python loop (the reference a notebook would
write). Prints bias, RMSE, 95%-CI coverage, mean ESS, and time per call.

    python benches/compare_ope.py [--quick] [--logs L] [--n N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from fyp_core import ope
from fyp_core.analytics.synthetic import BanditWorld


def loop_dr(r, p, pi, ql, qt):
    """Per-impression Python DR with its stderr: what the vectorised code replaces."""
    xs = []
    for i in range(len(r)):
        xs.append(qt[i] + pi[i] / p[i] * (r[i] - ql[i]))
    m = sum(xs) / len(xs)
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var / len(xs))


def timed(fn, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--logs", type=int, default=None)
    ap.add_argument("--n", type=int, default=None)
    a = ap.parse_args()
    logs = a.logs or (60 if a.quick else 500)
    n = a.n or (2_000 if a.quick else 20_000)
    for label, q_noise in (("good q-hat (noise 0.03)", 0.03), ("poor q-hat (noise 0.3)", 0.3)):
        world = BanditWorld(seed=1, q_noise=q_noise)
        est = {
            "ips": lambda g: ope.ips(g.r, g.p, g.pi),
            "ips clip=2": lambda g: ope.ips(g.r, g.p, g.pi, clip=2.0),
            "snips": lambda g: ope.snips(g.r, g.p, g.pi),
            "dr": lambda g: ope.dr(g.r, g.p, g.pi, g.q_logged, g.q_target),
            "sndr": lambda g: ope.sndr(g.r, g.p, g.pi, g.q_logged, g.q_target),
            "switch_dr tau=2": lambda g: ope.switch_dr(
                g.r, g.p, g.pi, g.q_logged, g.q_target, tau=2.0
            ),
        }
        res = {k: [] for k in est}
        for s in range(logs):
            g = world.sample(n, seed=10_000 + s)
            for k, f in est.items():
                res[k].append(f(g))
        truth = world.true_value
        print(f"\n{label}: {logs} logs x {n:,} impressions, true value {truth:.5f}")
        print(f"{'estimator':16s} {'bias':>9s} {'rmse':>9s} {'coverage':>9s} {'mean ESS':>9s}")
        for k, v in res.items():
            vals = np.array([e.value for e in v])
            cov = np.mean([e.ci[0] <= truth <= e.ci[1] for e in v])
            print(
                f"{k:16s} {vals.mean() - truth:+9.5f} "
                f"{np.sqrt(np.mean((vals - truth) ** 2)):9.5f} {cov:9.3f} "
                f"{np.mean([e.ess for e in v]):9.0f}"
            )
    big = 200_000 if a.quick else 1_000_000
    g = BanditWorld(seed=1).sample(big, seed=0)
    reps = 3 if a.quick else 7
    t_vec = timed(lambda: ope.dr(g.r, g.p, g.pi, g.q_logged, g.q_target), reps)
    lists = [x.tolist() for x in (g.r, g.p, g.pi, g.q_logged, g.q_target)]
    t_loop = timed(lambda: loop_dr(*lists), max(1, reps // 2))
    v_vec = ope.dr(g.r, g.p, g.pi, g.q_logged, g.q_target)
    v_loop = loop_dr(*lists)
    assert abs(v_vec.value - v_loop[0]) < 1e-9 and abs(v_vec.stderr - v_loop[1]) < 1e-9
    print(
        f"\ndr over {big:,} impressions (median of {reps}): fyp_core.ope {t_vec * 1e3:.1f} ms, "
        f"python loop {t_loop * 1e3:.0f} ms ({t_loop / t_vec:.0f}x)"
    )


if __name__ == "__main__":
    main()
