"""The ``fyp-core`` command: ``demo`` runs the synthetic serving demo, ``serve`` the reference
HTTP host (over a catalogue directory or the demo world), ``catalogue`` exports the demo world as a
catalogue directory or checks one, ``report`` writes the
static HTML dashboard of a log directory, ``retention`` rolls up and expires old raw partitions,
``compact`` merges the small files of closed hour partitions atomically,
``simulate`` writes a simulated log directory (schema v1) to try them on, ``loop`` runs the
learning loop over the synthetic world."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

__all__ = ["main"]


def _add_report_parser(sub: Any) -> None:
    r = sub.add_parser("report", help="write the static HTML analytics report of a log directory")
    r.add_argument("logdir", help="event log root (LOGDIR/<table>/dt=.../hour=.../*.parquet)")
    r.add_argument("--out", default="report.html", help="output HTML file (default report.html)")
    r.add_argument(
        "--window-hours", type=float, default=24.0, help="late-engagement window (default 24)"
    )
    r.add_argument(
        "--young-days",
        type=int,
        default=7,
        help="a creator younger than this is 'young' (default 7)",
    )
    r.add_argument(
        "--fresh-hours",
        type=float,
        default=24.0,
        help="a new item shown within this many hours counts as retrieved (default 24)",
    )
    r.add_argument(
        "--explore-setpoint",
        type=float,
        default=0.05,
        help="configured exploration share (default 0.05)",
    )
    r.add_argument(
        "--engine",
        choices=("duckdb", "spark"),
        default="duckdb",
        help="query engine (default duckdb; spark needs the [spark] extra and Java 17)",
    )


def _add_compact_parser(sub: Any) -> None:
    k = sub.add_parser("compact", help="merge the small files of closed hour partitions")
    k.add_argument("logdir")
    k.add_argument("--table", default=None, help="one table (default: every table)")
    k.add_argument("--dt", default=None, help="the partition's day, YYYY-MM-DD (with --hour)")
    k.add_argument("--hour", type=int, default=None, help="the partition's hour, 0-23")
    k.add_argument(
        "--older-than-hours",
        type=float,
        default=None,
        help="compact every partition whose hour ended more than N hours ago",
    )


def _add_demo_and_serve_parsers(sub: Any) -> None:
    """The ``demo`` and ``serve`` commands (the demo's arguments; serve adds a catalogue)."""
    d = sub.add_parser("demo", help="serve a feed over a synthetic catalogue and print figures")
    from fyp_core.demo import DEMO_LOG_DIR, add_arguments, add_serve_arguments

    add_arguments(d, log_dir_default=DEMO_LOG_DIR)
    v = sub.add_parser(
        "serve", help="run the reference HTTP host over a catalogue (default: the demo world)"
    )
    add_arguments(v)
    v.add_argument(
        "--catalogue",
        metavar="DIR",
        default=None,
        help="serve this catalogue directory (docs/catalogue.md) instead of the synthetic demo "
        "world; --items and --users are then ignored",
    )
    add_serve_arguments(v)


def _add_catalogue_parser(sub: Any) -> None:
    """The ``catalogue`` command: ``export`` the demo world as a catalogue, or ``check`` one."""
    c = sub.add_parser("catalogue", help="export the demo world as a catalogue, or check one")
    csub = c.add_subparsers(dest="catalogue_command")
    ce = csub.add_parser("export", help="write the synthetic world as a catalogue directory")
    ce.add_argument("dir", help="output directory (must not exist unless --overwrite)")
    ce.add_argument("--items", type=int, default=1_000_000, help="items (default 1M)")
    ce.add_argument("--users", type=int, default=100_000, help="users (default 100k)")
    ce.add_argument("--dim", type=int, default=64, help="embedding dimension (default 64)")
    ce.add_argument("--seed", type=int, default=0)
    ce.add_argument(
        "--now", type=float, default=None, help="snapshot time, seconds since epoch (default: now)"
    )
    ce.add_argument(
        "--no-creators", action="store_true", help="leave out creators.parquet (creator authority)"
    )
    ce.add_argument("--overwrite", action="store_true", help="replace an existing catalogue")
    cc = csub.add_parser("check", help="validate a catalogue directory and print a summary")
    cc.add_argument("dir")


def _add_retention_parser(sub: Any) -> None:
    """The ``retention`` command: roll up, then delete old raw partitions."""
    t = sub.add_parser("retention", help="roll up, then delete raw partitions older than N days")
    t.add_argument("logdir")
    t.add_argument("--days", type=int, default=30, help="days of raw logs to keep (default 30)")
    t.add_argument("--dry-run", action="store_true", help="list what would go, change nothing")
    t.add_argument("--window-hours", type=float, default=24.0)


def _add_simulate_parser(sub: Any) -> None:
    """The ``simulate`` command: a simulated log directory with known ground truth."""
    s = sub.add_parser("simulate", help="write a simulated log directory with known ground truth")
    s.add_argument("logdir")
    s.add_argument("--requests", type=int, default=20_000)
    s.add_argument("--days", type=int, default=28)
    s.add_argument("--seed", type=int, default=0)


def _add_loop_parser(sub: Any) -> None:
    """The ``loop`` command: the learning loop over the synthetic world, day by day."""
    lp = sub.add_parser(
        "loop",
        help="run the learning loop over the synthetic world, one "
        "simulated day at a time (docs/loop.md; needs fyp-core[train])",
    )
    lp.add_argument("--days", type=int, required=True, help="simulated days to run")
    lp.add_argument("--seed", type=int, default=0)
    lp.add_argument("--items", type=int, default=20_000, help="catalogue size (default 20k)")
    lp.add_argument("--users", type=int, default=2_000, help="users (default 2k)")
    lp.add_argument("--requests", type=int, default=2_000, help="requests per day (default 2k)")
    lp.add_argument(
        "--break",
        dest="break_",
        choices=["diversity", "exploration", "parity"],
        default=None,
        help="remove one safeguard from day 1 on (the loop must detect it)",
    )
    lp.add_argument(
        "--online-every",
        dest="online_every",
        metavar="MIN",
        type=int,
        default=0,
        help="fine-tune an online shadow every MIN simulated minutes (docs/train.md; 0: off)",
    )
    lp.add_argument(
        "--json",
        dest="json_out",
        metavar="OUT",
        default=None,
        help="write one JSON record per simulated day to OUT",
    )
    lp.add_argument(
        "--report",
        metavar="HTML",
        default=None,
        help="write an HTML page of the daily series (one line per day)",
    )


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fyp-core", description=__doc__)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")
    _add_demo_and_serve_parsers(sub)
    _add_catalogue_parser(sub)
    _add_report_parser(sub)
    _add_compact_parser(sub)
    _add_retention_parser(sub)
    _add_simulate_parser(sub)
    _add_loop_parser(sub)
    return p


def _report(args: argparse.Namespace) -> int:
    from fyp_core.report import write_report

    try:
        path = write_report(
            args.logdir,
            args.out,
            window_hours=args.window_hours,
            young_days=args.young_days,
            fresh_hours=args.fresh_hours,
            explore_setpoint=args.explore_setpoint,
            engine=args.engine,
        )
    except ImportError as e:  # engine="spark" without the [spark] extra: one line, exit 2
        raise ValueError(str(e)) from e
    print(f"wrote {path}")
    return 0


def _retention(args: argparse.Namespace) -> int:
    from fyp_core.retention import run_retention

    res = run_retention(
        args.logdir, days=args.days, dry_run=args.dry_run, window_hours=args.window_hours
    )
    verb = "would delete" if res.dry_run else "deleted"
    print(
        f"cutoff {res.cutoff}: rolled up {len(res.rolled_up)} day(s) "
        f"({res.rollup_rows} rollup rows), {verb} {len(res.deleted)} partition(s), "
        f"{res.bytes_freed / 1e6:.1f} MB"
    )
    return 0


def _compact(args: argparse.Namespace) -> int:
    from fyp_core.compact import compact

    if args.dt is None and args.hour is None and args.older_than_hours is None:
        raise ValueError("give --table T --dt D --hour H, or --older-than-hours N")
    res = compact(
        args.logdir,
        table=args.table,
        dt=args.dt,
        hour=args.hour,
        older_than_hours=args.older_than_hours,
    )
    print(
        f"compacted {len(res.merged)} partition(s): {res.files_before} files -> "
        f"{len(res.merged)}, {res.rows} rows, {res.bytes_before / 1e6:.1f} MB -> "
        f"{res.bytes_after / 1e6:.1f} MB; {len(res.skipped)} partition(s) already one file"
    )
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from fyp_core.analytics.synthetic import generate_log

    truth = generate_log(args.logdir, n_requests=args.requests, days=args.days, seed=args.seed)
    print(
        f"wrote {truth.n_impressions_logged} impressions to {args.logdir}; true lift "
        f"{truth.lift:.3f}, ranked rate {truth.ranked_rate:.4f}, "
        f"exploration rate {truth.exploration_rate:.4f}"
    )
    return 0


def _catalogue(args: argparse.Namespace) -> int:
    import time

    from fyp_core.catalog import Catalogue, load_catalogue

    if args.catalogue_command == "export":
        from fyp_core.synth import make_world

        t = time.perf_counter()
        now = time.time() if args.now is None else args.now
        world = make_world(
            n_items=args.items, n_users=args.users, dim=args.dim, seed=args.seed, now=now
        )
        cat = Catalogue.from_world(world, creator_authority=not args.no_creators)
        path = cat.save(args.dir, overwrite=args.overwrite)
        print(
            f"wrote {world.n_items:,} items (dim {world.dim}) to {path} "
            f"in {time.perf_counter() - t:.1f} s"
        )
        return 0
    if args.catalogue_command == "check":
        t = time.perf_counter()
        cat = load_catalogue(args.dir)
        print(
            f"{args.dir}: ok, format version {cat.manifest['version']}, {cat.n_items:,} items, "
            f"{cat.n_users:,} users, {cat.n_creators:,} creators, dim {cat.dim}, "
            f"as_of {cat.as_of:.0f} (checked in {time.perf_counter() - t:.2f} s)"
        )
        return 0
    print("fyp-core catalogue: pick a subcommand: export DIR | check DIR", file=sys.stderr)
    return 2


def _serve_or_demo(args: argparse.Namespace) -> int:
    """``serve`` and ``demo``: arguments checked before any build; a bad argument, a busy port
    or a bad catalogue is one line and exit 2; Ctrl-C stops with one line, exit 130."""
    from fyp_core.demo import check_args, run_demo, run_server

    name = f"fyp-core {args.command}"
    try:
        check_args(args, args.command)
        return run_server(args) if args.command == "serve" else run_demo(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        return 130


def _loop(args: argparse.Namespace) -> int:
    from fyp_core.loop import run

    def show(r: dict) -> None:
        lift = r["lift"]
        lift_s = "not measurable" if lift is None else f"{lift['value']:+.4f}"
        rt = r["retrieval"]
        rt_s = f"retrieval {rt['version']}" + (
            f" (candidate {rt['candidate']} -> {rt['decision']})" if rt["candidate"] else ""
        )
        print(
            f"day {r['day']}: live {r['live_version']} true value {r['true_value']:.4f} "
            f"lift {lift_s} entropy {r['topic_entropy']:.3f} gini {r['creator_gini']:.3f} "
            f"over-cap {r['creator_overflow']:.3f} -> {r['decision']}: "
            f"{'; '.join(r['reasons'])}; {rt_s}",
            flush=True,
        )
        on = (r.get("online") or {}).get("day")
        if on:
            print(
                f"  online ({len(r['online']['synced'])} syncs): next-chunk AUC "
                f"{on['auc_online']:.4f} vs daily {on['auc_daily']:.4f}, log-loss "
                f"{on['ll_online']:.4f} vs {on['ll_daily']:.4f}",
                flush=True,
            )

    records = run(
        days=args.days,
        seed=args.seed,
        items=args.items,
        users=args.users,
        requests_per_day=args.requests,
        break_=args.break_,
        online_every_minutes=args.online_every,
        json_out=args.json_out,
        progress=show,
    )
    if args.report:
        from fyp_core.report import write_loop_report

        print(f"wrote {write_loop_report(records, args.report)}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``fyp-core`` command: parses ``argv`` (default ``sys.argv[1:]``) and runs the subcommand.

    Returns the exit status: 0 on success, 2 for a usage error or for bad input (a
    ``ValueError`` or ``OSError`` of report/retention/compact/simulate/catalogue/loop, printed as
    one line on stderr instead of a traceback).
    """
    args = _build_parser().parse_args(argv)
    if args.version:
        from fyp_core import __version__

        print(__version__)
        return 0
    handlers = {
        "report": _report,
        "retention": _retention,
        "compact": _compact,
        "simulate": _simulate,
        "catalogue": _catalogue,
        "loop": _loop,
    }
    if args.command in ("serve", "demo"):
        return _serve_or_demo(args)
    if args.command in handlers:
        try:
            return handlers[args.command](args)
        except (ValueError, OSError) as e:  # bad input: a clear message, not a traceback
            print(f"fyp-core {args.command}: {e}", file=sys.stderr)
            return 2
    _build_parser().print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
