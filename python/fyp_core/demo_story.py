"""The end of ``fyp-core demo``: a headline that says whether the feed works (the ranker's
causal lift over the exploration arm, throughput, memory, the latency budget), each term
explained in one line, and the commands to run next on the log the demo kept."""

from __future__ import annotations

import argparse
import math
import resource
import shlex
import sys
from typing import Any, Optional

import numpy as np

__all__ = ["LATENCY_BUDGET_MS", "print_headline", "print_next_steps"]

LATENCY_BUDGET_MS = 20.0  # DESIGN.md section 6: end-to-end feed() p99


def _lift_from_counts(engaged: dict[str, list[int]]) -> Optional[tuple[float, float, float]]:
    """Completion-rate ratio ranked / exploration - 1 with a 95% CI (delta method on the log)."""
    (n_r, k_r), (n_e, k_e) = engaged["ranked"], engaged["exploration"]
    if min(k_r, k_e, n_r - k_r, n_e - k_e) <= 0:
        return None
    p_r, p_e = k_r / n_r, k_e / n_e
    se = math.sqrt((1 - p_r) / k_r + (1 - p_e) / k_e)
    log_ratio = math.log(p_r / p_e)
    return p_r / p_e - 1, math.exp(log_ratio - 1.96 * se) - 1, math.exp(log_ratio + 1.96 * se) - 1


def _lift(f: dict[str, Any], log_dir: Optional[str]) -> tuple[Optional[tuple], str]:
    if log_dir:
        try:
            from fyp_core.analytics import lift_by_topic
            from fyp_core.demo import _Progress

            bar = _Progress("reading the log (DuckDB)", 1)
            rows = lift_by_topic(log_dir).to_pylist()
            bar.update(1)
            row = next((r for r in rows if r["topic"] is None), None)
            if row and row["lift"] is not None and row["lift_lo"] is not None:
                return (row["lift"], row["lift_lo"], row["lift_hi"]), "engagement, from the log"
        except Exception as e:  # the headline must not hide the run's figures
            print(f"(lift from the log unavailable: {e})", file=sys.stderr)
    return _lift_from_counts(f["engaged"]), "completion, in memory"


def print_headline(f: dict[str, Any], args: argparse.Namespace, log_dir: Optional[str]) -> None:
    """Prints the demo's headline from its figures ``f``: the ranker's causal lift over the
    exploration arm (from the log in ``log_dir`` when there is one), throughput, peak memory and
    the feed p99 against ``LATENCY_BUDGET_MS``, each explained in one line."""
    lift, basis = _lift(f, log_dir)
    p99 = float(np.percentile(f["total_ms"], 99)) if len(f["total_ms"]) else float("nan")
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB
    n = len(f["total_ms"])
    verdict = "PASS" if p99 <= LATENCY_BUDGET_MS else "FAIL"
    print("\n== headline ==")
    if lift is None:
        print("ranked vs exploration lift     not measurable yet (too few engaged slots)")
    else:
        print(
            f"ranked vs exploration lift     {lift[0]:+.1%} (95% CI {lift[1]:+.1%} .. "
            f"{lift[2]:+.1%}; {basis})"
        )
    print(
        f"throughput                     {n / max(f['serve_s'], 1e-9):,.0f} requests/s "
        f"(one thread, feed + engage + uploads)"
    )
    print(f"memory                         {rss_gb:.2f} GB peak resident")
    print(
        f"latency budget                 {verdict}: p99 {p99:.1f} ms vs budget "
        f"{LATENCY_BUDGET_MS:.0f} ms ({args.items:,} items, K={args.candidates})"
    )
    for line in (
        "  lift: how much more often ranked slots were engaged than exploration slots; those show",
        "        uniform random items (a randomised control), so the difference is causal",
        "  CI: holds the true lift 95% of the time; a CI that excludes 0 means a real effect",
        "  relaxed rule: a policy rule (e.g. fresh_floor: a fresh item per window) the candidates",
        "        could not meet, loosened for that response only",
        "  budget: the p99 target for one feed() call at 1M items, K=1000 (the SLO is 200 ms)",
    ):
        print(line)


def print_next_steps(args: argparse.Namespace, log_dir: Optional[str]) -> None:
    """Prints the commands to run next (report on the kept log, serve the same world, ...)."""
    print("\nnext:")
    if log_dir:
        q = shlex.quote(log_dir)
        print(f"  fyp-core report {q} --out report.html   # the analytics dashboard of this run")
    print(
        f"  fyp-core serve --items {args.items} --users {args.users} --log-dir "
        f"fyp-serve-log   # the same world over HTTP (docs/host.md)"
    )
