"""The ``fyp-core`` command: ``demo`` runs the synthetic serving demo, ``serve`` the reference
HTTP host, ``report`` writes the
static HTML dashboard of a log directory, ``retention`` rolls up and expires old raw partitions,
``simulate`` writes a simulated log directory (schema v1) to try them on."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fyp-core", description=__doc__)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")
    d = sub.add_parser("demo", help="serve a feed over a synthetic catalogue and print figures")
    from fyp_core.demo import add_arguments

    add_arguments(d)
    v = sub.add_parser("serve", help="run the reference HTTP host over the demo catalogue")
    add_arguments(v)
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--max-inflight", type=int, default=64,
                   help="concurrent requests before answering 503 (default 64)")

    r = sub.add_parser("report", help="write the static HTML analytics report of a log directory")
    r.add_argument("logdir", help="event log root (LOGDIR/<table>/dt=.../hour=.../*.parquet)")
    r.add_argument("--out", default="report.html", help="output HTML file (default report.html)")
    r.add_argument("--window-hours", type=float, default=24.0,
                   help="late-engagement window (default 24)")
    r.add_argument("--young-days", type=int, default=7,
                   help="a creator younger than this is 'young' (default 7)")
    r.add_argument("--fresh-hours", type=float, default=24.0,
                   help="a new item shown within this many hours counts as retrieved (default 24)")
    r.add_argument("--explore-setpoint", type=float, default=0.05,
                   help="configured exploration share (default 0.05)")

    t = sub.add_parser("retention", help="roll up, then delete raw partitions older than N days")
    t.add_argument("logdir")
    t.add_argument("--days", type=int, default=30, help="days of raw logs to keep (default 30)")
    t.add_argument("--dry-run", action="store_true", help="list what would go, change nothing")
    t.add_argument("--window-hours", type=float, default=24.0)

    s = sub.add_parser("simulate", help="write a simulated log directory with known ground truth")
    s.add_argument("logdir")
    s.add_argument("--requests", type=int, default=20_000)
    s.add_argument("--days", type=int, default=28)
    s.add_argument("--seed", type=int, default=0)
    return p


def _report(args: argparse.Namespace) -> int:
    from fyp_core.report import write_report

    path = write_report(args.logdir, args.out, window_hours=args.window_hours,
                        young_days=args.young_days, fresh_hours=args.fresh_hours,
                        explore_setpoint=args.explore_setpoint)
    print(f"wrote {path}")
    return 0


def _retention(args: argparse.Namespace) -> int:
    from fyp_core.retention import run_retention

    res = run_retention(args.logdir, days=args.days, dry_run=args.dry_run,
                        window_hours=args.window_hours)
    verb = "would delete" if res.dry_run else "deleted"
    print(f"cutoff {res.cutoff}: rolled up {len(res.rolled_up)} day(s) "
          f"({res.rollup_rows} rollup rows), {verb} {len(res.deleted)} partition(s), "
          f"{res.bytes_freed / 1e6:.1f} MB")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from fyp_core.analytics.synthetic import generate_log

    truth = generate_log(args.logdir, n_requests=args.requests, days=args.days, seed=args.seed)
    print(f"wrote {truth.n_impressions_logged} impressions to {args.logdir}; true lift "
          f"{truth.lift:.3f}, ranked rate {truth.ranked_rate:.4f}, "
          f"exploration rate {truth.exploration_rate:.4f}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.version:
        from fyp_core import __version__

        print(__version__)
        return 0
    handlers = {"report": _report, "retention": _retention, "simulate": _simulate}
    if args.command == "serve":
        from fyp_core.demo import run_server

        return run_server(args)
    if args.command == "demo":
        from fyp_core.demo import run_demo

        return run_demo(args)
    if args.command in handlers:
        try:
            return handlers[args.command](args)
        except ValueError as e:  # bad input: a clear message, not a traceback
            print(f"fyp-core {args.command}: {e}", file=sys.stderr)
            return 2
    _build_parser().print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
