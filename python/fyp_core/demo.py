"""``fyp-core demo``: a feed served over a synthetic catalogue, with figures printed.

Builds the synthetic world (``fyp_core.synth``), indexes it, serves requests through the full
pipeline (retrieval, ranking, policy re-ranking, exploration mixing, frozen predictions, event
log), feeds simulated engagement back through ``engage``, uploads new items while serving, and
prints latency percentiles per stage and end to end, the exploration share, the worst topic share
in any top-20, the fresh-item retrieval rate and how often a policy rule had to relax.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import sys
import time
from collections import Counter
from typing import Any

import numpy as np

from fyp_core import TrafficSplit

__all__ = [
    "DEMO_LOG_DIR",
    "add_arguments",
    "add_serve_arguments",
    "bind",
    "build_pipeline",
    "check_args",
    "run_demo",
    "run_server",
    "serving_source",
]


class _Progress:
    """A minimal terminal progress bar with an ETA (stderr), so the demo needs no extra
    dependency. The ETA extrapolates the phase's mean rate so far."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.t0, self.last = label, max(total, 1), time.perf_counter(), -1.0
        self.finished = False
        self.update(0)  # the phase shows up as soon as it starts

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if self.finished or (now - self.last < 0.2 and done < self.total):
            return
        self.last = now
        frac = min(done / self.total, 1.0)
        bar = "#" * int(30 * frac)
        spent = now - self.t0
        if frac >= 1:
            eta = "done     "
        else:
            eta = f"ETA {spent * (1 - frac) / frac:5.1f}s" if frac > 0 else "ETA     ?"
        sys.stderr.write(f"\r{self.label:<28} [{bar:<30}] {100 * frac:5.1f}%  {spent:6.1f}s  {eta}")
        if done >= self.total:
            sys.stderr.write("\n")
            self.finished = True
        sys.stderr.flush()


def _pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if len(a) else float("nan")


def build_pipeline(source: Any, args: argparse.Namespace, log_dir: str | None) -> Any:
    """Index a catalogue and assemble a FeedPipeline over it (shared with the benchmarks and
    ``fyp-core serve``). `source` is a ``fyp_core.catalog.Catalogue`` (e.g. from
    ``load_catalogue``) or the synthetic ``World`` (viewed as a catalogue without copying)."""
    from fyp_core.catalog import Catalogue, apply_catalogue

    cat = source if isinstance(source, Catalogue) else Catalogue.from_world(source)
    index = _empty_index(cat.dim, args, cat.n_items + 10_000)
    bar = _Progress("indexing items (HNSW)", cat.n_items)
    step = 50_000
    for s in range(0, cat.n_items, step):
        e = min(s + step, cat.n_items)
        index.add(cat.item_ids[s:e], np.asarray(cat.item_embeddings[s:e]))
        bar.update(e)
    pipe = assemble_pipeline(index, args, log_dir)
    bar = _Progress("loading feature store", cat.n_items)
    apply_catalogue(pipe, cat, index=False, batch=200_000, progress=bar.update)
    return pipe


def _empty_index(dim: int, args: argparse.Namespace, capacity: int) -> Any:
    from fyp_core import HnswIndex

    return HnswIndex(
        dim,
        metric="ip",
        m=16,
        ef_construction=args.ef_construction,
        capacity=capacity,
        seed=args.seed,
    )


def assemble_pipeline(index: Any, args: argparse.Namespace, log_dir: str | None) -> Any:
    """The demo ranker, policy and traffic split around `index` (no items loaded yet)."""
    from fyp_core import EventLog, FeedPipeline, MlpRanker, Reranker
    from fyp_core.synth import TASKS, demo_ranker_weights

    weights, biases, outputs = demo_ranker_weights(index.dim, seed=args.seed)
    ranker = MlpRanker(
        weights,
        biases,
        activation="relu",
        outputs=outputs,
        version="demo-v1",
        task_names=list(TASKS),
    )
    reranker = Reranker(
        {
            "window": 20,
            "max_topic_share": 0.4,
            "max_per_creator": 2,
            "blocked_categories": [],
            "category_caps": {"1": 0.1},
            "fresh_floor": 1,
            "diversity": "dpp",
            "dpp_alpha": 2.0,
        }
    )
    split = TrafficSplit(explore_rate=args.explore_rate, salt="fyp-demo")
    log = EventLog(log_dir, tasks=list(TASKS)) if log_dir else None
    return FeedPipeline(
        index,
        ranker,
        reranker,
        split,
        event_log=log,
        config={
            "candidates": args.candidates,
            "ef": args.ef,
            "fresh_budget": 0.1,
            "fresh_max_age_s": 3600.0,
            "task_weights": [1.0, 0.5, 1.0, 1.0, 0.3, 0.02],
        },
        user_token_key=b"demo-token-key-not-secret",
        redis_url=getattr(args, "redis_url", None),
        redis_namespace=getattr(args, "redis_namespace", "default"),
    )


def pipeline_from_snapshot(args: argparse.Namespace, log_dir: str | None) -> tuple[Any, int] | None:
    """``fyp-core serve --snapshot-dir D``: the pipeline from the newest valid snapshot in D
    (older ones when newer ones are refused), the catalogue stream replayed from its position.
    None when D holds no snapshot, or none that verifies (then the host builds from the
    catalogue, as without D)."""
    from fyp_core import CorruptFileError, FeedPipeline

    d = args.snapshot_dir
    t = time.perf_counter()
    manifest = FeedPipeline.latest_snapshot(d)
    if manifest is None:
        print(f"no snapshot in {d} yet: building from the catalogue", file=sys.stderr)
        return None
    pipe = assemble_pipeline(_empty_index(manifest["dim"], args, 1024), args, log_dir)
    try:
        rep = pipe.load_snapshot(d)
    except CorruptFileError as e:
        print(f"{e}: building from the catalogue", file=sys.stderr)
        return None
    for why in rep["skipped"]:
        print(f"refused a snapshot, used an older one: {why}", file=sys.stderr)
    replayed = 0
    try:
        while n := pipe.sync_catalog(max_entries=100_000, snapshot_dir=d)["applied"]:
            replayed += n
    except OSError as e:  # Redis down: serve the snapshot; the sync thread catches up later
        print(f"catalogue stream not replayed yet ({e})", file=sys.stderr)
    print(
        f"started from snapshot {rep['path']}: {rep['items']:,} items at stream position "
        f"{rep['position']}, {replayed:,} stream entries replayed "
        f"({time.perf_counter() - t:.1f} s)",
        file=sys.stderr,
    )
    return pipe, int(manifest["dim"])


def run_demo(args: argparse.Namespace) -> int:
    """``fyp-core demo``: builds a synthetic world and its pipeline, serves ``--requests`` feeds
    (with uploads at ``--upload-rate``), then prints the figures, the headline and the next
    commands. The event log goes to ``--log-dir`` unless ``--no-log``; it is flushed and closed
    also when interrupted. Returns the exit status (0)."""
    from fyp_core.synth import make_world

    t0 = time.perf_counter()
    print(
        f"building a synthetic world: {args.items:,} items, {args.users:,} users "
        f"(seed {args.seed})",
        file=sys.stderr,
    )
    bar = _Progress("building world", args.items + args.users)
    world = make_world(
        n_items=args.items,
        n_users=args.users,
        seed=args.seed,
        now=time.time(),
        progress=bar.update,
    )
    log_dir = None if args.no_log else args.log_dir
    pipe = build_pipeline(world, args, log_dir)
    setup_s = time.perf_counter() - t0
    try:
        figures = _serve(world, pipe, args)
    finally:
        # flushes the log, also when interrupted (a one-step bar: the flush has no fraction)
        flush = _Progress("flushing the event log", 1) if log_dir else None
        pipe.close()
        if flush is not None:
            flush.update(1)
    _print(figures, args, setup_s)
    from fyp_core.demo_story import print_headline, print_next_steps

    print_headline(figures, args, log_dir)
    print_next_steps(args, log_dir)
    return 0


def _serve(world: Any, pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed + 1)
    activity = 1.0 / np.arange(1, len(world.user_ids) + 1) ** 0.6
    activity /= activity.sum()
    n_req = args.requests
    user_rows = rng.choice(len(world.user_ids), size=n_req, p=activity)
    total_ms: list[float] = []
    stage_ms: dict[str, list[float]] = {}
    explore = slots = 0
    worst_topic_share = 0.0
    relaxed: Counter[str] = Counter()
    responses_relaxed = 0
    uploads: list[tuple[int, float]] = []
    engaged = {"ranked": [0, 0], "exploration": [0, 0], "fresh": [0, 0]}
    bar = _Progress("serving requests", n_req)
    start = time.time()
    t_serve = time.perf_counter()
    for i in range(n_req):
        # uploads arrive at a fixed wall-clock rate while requests are served
        while args.upload_rate > 0 and len(uploads) < (time.time() - start) * args.upload_rate:
            new = world.new_items(1, time.time(), rng)
            pipe.upload(
                int(new["ids"][0]),
                new["emb"][0],
                int(new["topic"][0]),
                int(new["creator"][0]),
                category=int(new["category"][0]),
            )
            uploads.append((int(new["ids"][0]), time.time()))
        u = int(user_rows[i])
        t = time.perf_counter()
        resp = pipe.feed(world.user_ids[u], f"req-{i}", n=args.n)
        total_ms.append((time.perf_counter() - t) * 1e3)
        for k, v in resp.timings.items():
            stage_ms.setdefault(k, []).append(v)
        src = resp.sources
        slots += len(src)
        explore += src.count("exploration")
        if len(resp.topics):
            worst_topic_share = max(
                worst_topic_share, np.bincount(resp.topics[:20]).max() / min(20, len(resp.topics))
            )
        if resp.relaxed:
            responses_relaxed += 1
            relaxed.update(resp.relaxed)
        rows = np.searchsorted(world.item_ids, resp.item_ids)
        rows = np.minimum(rows, world.n_items - 1)
        outcome = world.engagement(np.full(len(rows), u), rows, np.arange(len(rows)), rng)
        for j, imp in enumerate(resp.impression_ids):
            c = bool(outcome["completed"][j])
            engaged[src[j]][0] += 1
            engaged[src[j]][1] += c
            pipe.engage(
                imp,
                watched_seconds=float(outcome["watched_seconds"][j]),
                completed=c,
                liked=bool(outcome["liked"][j]),
                shared=bool(outcome["shared"][j]),
                followed=bool(outcome["followed"][j]),
            )
        bar.update(i + 1)
    serve_s = time.perf_counter() - t_serve
    retrieved = pipe.first_candidate_times(np.array([i for i, _ in uploads], dtype=np.uint64))
    fresh_ok = sum(1 for (_, ts), r in zip(uploads, retrieved) if r is not None and r - ts <= 60.0)
    return {
        "total_ms": np.array(total_ms),
        "serve_s": serve_s,
        "stage_ms": {k: np.array(v) for k, v in stage_ms.items()},
        "explore": explore,
        "slots": slots,
        "worst_topic_share": worst_topic_share,
        "responses_relaxed": responses_relaxed,
        "relaxed": relaxed,
        "uploads": len(uploads),
        "fresh_ok": fresh_ok,
        "engaged": engaged,
        "stats": pipe.stats(),
        "freshness": pipe.freshness(),
        "feature_set": (pipe.feature_set_version, len(pipe.feature_names)),
    }


def _print(f: dict[str, Any], args: argparse.Namespace, setup_s: float) -> None:
    n = len(f["total_ms"])
    print(
        f"\n== fyp-core demo: {args.items:,} items, {args.users:,} users, "
        f"{n:,} requests of n={args.n}, "
        f"K={args.candidates} =="
    )
    print(f"setup (world + index + store)  {setup_s:6.1f} s")
    print(f"{'latency ms':<22}{'p50':>8}{'p95':>8}{'p99':>8}{'p99.9':>8}")
    rows = [("end to end (python)", f["total_ms"])] + list(f["stage_ms"].items())
    for name, a in rows:
        print(f"{name:<22}" + "".join(f"{_pct(a, q):8.2f}" for q in (50, 95, 99, 99.9)))
    share = f["explore"] / max(f["slots"], 1)
    sigma = math.sqrt(args.explore_rate * (1 - args.explore_rate) / max(f["slots"], 1))
    print(
        f"exploration share              {share:.4f} (setpoint {args.explore_rate}, "
        f"{(share - args.explore_rate) / sigma:+.1f} sigma)"
    )
    print(f"max topic share in any top-20  {f['worst_topic_share']:.2f} (policy cap 0.40)")
    if f["uploads"]:
        print(
            f"fresh-item retrieval rate      {f['fresh_ok'] / f['uploads']:.3f} "
            f"({f['fresh_ok']}/{f['uploads']} uploads reached a candidate set within 60 s)"
        )
    print(f"responses that relaxed a rule  {f['responses_relaxed']} of {n} {dict(f['relaxed'])}")
    for src, (shown, done) in f["engaged"].items():
        if shown:
            print(f"completion rate, {src:<12}  {done / shown:.3f} over {shown:,} impressions")
    version, width = f["feature_set"]
    print(f"features served                {width} per row, feature set {version}")
    for tier, t in f["freshness"].items():
        alert = "  ALERT (> 2x cadence)" if t["alert"] else ""
        print(
            f"feature age, {tier:<17} p99 {t['p99_age_s']:10.1f} s "
            f"(cadence {t['cadence_s']:.0f} s){alert}"
        )


DEMO_LOG_DIR = "fyp-demo-log"


def add_arguments(p: argparse.ArgumentParser, log_dir_default: str | None = None) -> None:
    """The world and serving options shared by ``fyp-core demo`` and ``fyp-core serve``
    (``--items``, ``--users``, ``--requests``, ``--n``, ``--candidates``, ``--ef``, ...);
    ``log_dir_default`` is the ``--log-dir`` default (None: no event log unless given)."""
    p.add_argument("--items", type=int, default=1_000_000, help="catalogue size (default 1M)")
    p.add_argument("--users", type=int, default=100_000, help="users (default 100k)")
    p.add_argument("--requests", type=int, default=3_000, help="feed requests to serve")
    p.add_argument("--n", type=int, default=20, help="slots per response")
    p.add_argument("--candidates", type=int, default=1000, help="ANN candidates per request (K)")
    p.add_argument("--ef", type=int, default=1000, help="HNSW search breadth")
    p.add_argument("--ef-construction", type=int, default=100, help="HNSW build breadth")
    p.add_argument("--explore-rate", type=float, default=0.05)
    p.add_argument(
        "--upload-rate", type=float, default=5.0, help="new uploads per second of serving"
    )
    where = f"default ./{log_dir_default}" if log_dir_default else "default: no log"
    p.add_argument("--log-dir", default=log_dir_default, help=f"write the event log here ({where})")
    p.add_argument("--no-log", action="store_true", help="serve without the event log")
    p.add_argument("--seed", type=int, default=0)


def serving_source(args: argparse.Namespace) -> Any:
    """What ``fyp-core serve`` serves: the catalogue in ``--catalogue DIR`` if given (validated,
    embeddings memory-mapped), else the synthetic demo world (``--items``, ``--users``)."""
    if getattr(args, "catalogue", None):
        from fyp_core.catalog import load_catalogue

        t = time.perf_counter()
        cat = load_catalogue(args.catalogue)
        print(
            f"loaded catalogue {args.catalogue}: {cat.n_items:,} items, {cat.n_users:,} users, "
            f"dim {cat.dim} ({time.perf_counter() - t:.1f} s)",
            file=sys.stderr,
        )
        return cat
    from fyp_core.synth import make_world

    bar = _Progress("building world", args.items + args.users)
    return make_world(
        n_items=args.items,
        n_users=args.users,
        seed=args.seed,
        now=time.time(),
        progress=bar.update,
    )


def add_serve_arguments(v: argparse.ArgumentParser) -> None:
    """The host's own options of ``fyp-core serve`` (limits, shutdown, logging)."""
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument(
        "--max-inflight",
        type=int,
        default=None,
        metavar="N",
        help="pipeline calls at once before answering 503 (default: 4 per core, "
        "at most 32; docs/host.md says how to size it)",
    )
    v.add_argument(
        "--max-body-bytes",
        type=int,
        default=1 << 20,
        metavar="B",
        help="larger request bodies get 413 (default 1 MiB)",
    )
    v.add_argument(
        "--body-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="a body not received within S seconds gets 408 (default 5)",
    )
    v.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="on SIGTERM/SIGINT, wait at most S seconds for in-flight requests "
        "before closing the event log (default 10)",
    )
    v.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="uvicorn and host log level (default warning)",
    )
    v.add_argument("--access-log", action="store_true", help="log one line per request")
    v.add_argument(
        "--redis-url",
        default=None,
        metavar="URL",
        help="share the online feature tier and the catalogue with every host on this Redis "
        "(redis://host:port/db); uploads on one host reach the others (docs/redis.md)",
    )
    v.add_argument(
        "--redis-namespace",
        default="default",
        metavar="NS",
        help="key prefix separating deployments on one Redis (default 'default')",
    )
    v.add_argument(
        "--snapshot-dir",
        default=None,
        metavar="D",
        help="start from the newest valid host snapshot in D (then replay the catalogue stream "
        "from its position) instead of building the index; write snapshots there "
        "(POST /admin/snapshot, --snapshot-every); docs/scale-out.md",
    )
    v.add_argument(
        "--snapshot-every",
        type=float,
        default=0.0,
        metavar="S",
        help="write a host snapshot into --snapshot-dir every S seconds (default 0: on demand)",
    )
    v.add_argument(
        "--snapshot-keep",
        type=int,
        default=3,
        metavar="K",
        help="snapshots kept in --snapshot-dir, newest first (default 3)",
    )


def check_args(args: argparse.Namespace, command: str) -> None:
    """Refuse bad arguments before any expensive work, with one line saying what to change."""
    rules: list[tuple[str, bool, str]] = [
        ("--n", 1 <= args.n <= 200, "in [1, 200]"),
        ("--explore-rate", 0.0 <= args.explore_rate <= 1.0, "in [0, 1]"),
        ("--candidates", args.candidates >= 1, ">= 1"),
        ("--ef", args.ef >= 1, ">= 1"),
        ("--ef-construction", args.ef_construction >= 1, ">= 1"),
        ("--upload-rate", args.upload_rate >= 0, ">= 0"),
    ]
    if not getattr(args, "catalogue", None):
        rules += [("--items", args.items >= 1, ">= 1"), ("--users", args.users >= 1, ">= 1")]
    if command == "demo":
        rules.append(("--requests", args.requests >= 1, ">= 1"))
    if command == "serve":
        rules += [
            ("--port", 0 <= args.port <= 65535, "in [0, 65535]"),
            ("--max-inflight", args.max_inflight is None or args.max_inflight >= 1, ">= 1"),
            ("--max-body-bytes", args.max_body_bytes >= 1, ">= 1"),
            ("--body-timeout", args.body_timeout > 0, "> 0"),
            ("--drain-timeout", args.drain_timeout > 0, "> 0"),
            ("--snapshot-every", args.snapshot_every >= 0, ">= 0"),
            ("--snapshot-keep", args.snapshot_keep >= 1, ">= 1"),
        ]
        if args.snapshot_every > 0 and not args.snapshot_dir:
            raise ValueError("--snapshot-every needs --snapshot-dir D (where to write them)")
    for flag, ok, rule in rules:
        if not ok:
            value = getattr(args, flag[2:].replace("-", "_"))
            raise ValueError(f"{flag} must be {rule}, got {value}")
    if args.log_dir and os.path.exists(args.log_dir) and not os.path.isdir(args.log_dir):
        raise ValueError(f"--log-dir {args.log_dir} exists and is not a directory")
    snap = getattr(args, "snapshot_dir", None)
    if snap and os.path.exists(snap) and not os.path.isdir(snap):
        raise ValueError(f"--snapshot-dir {snap} exists and is not a directory")


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, so a busy port fails in a second, not after the build;
    uvicorn then serves on this very socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto
    # says TCP, and without it every keep-alive response's body waited ~40 ms behind its headers
    # (Nagle + delayed ACK); Linux also copies the listener's TCP_NODELAY to accepted sockets
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # uvicorn re-raises the signal it caught once it has drained and run the lifespan shutdown;
    # turning it into SystemExit lets `finally` blocks and atexit hooks run instead of dying.
    raise SystemExit(0)


def run_server(args: argparse.Namespace) -> int:
    """``fyp-core serve``: a catalogue (or the demo world) behind the reference ASGI host.

    An orderly stop (SIGTERM, SIGINT) stops accepting, drains the in-flight requests for at
    most ``--drain-timeout`` seconds, then flushes and closes the event log."""
    import uvicorn

    from fyp_core.server import HostLimits, create_app

    check_args(args, "serve")
    sock = bind(args.host, args.port)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    log_dir = None if args.no_log else args.log_dir
    started = pipeline_from_snapshot(args, log_dir) if args.snapshot_dir else None
    if started is None:
        source = serving_source(args)
        started = build_pipeline(source, args, log_dir), source.dim
    pipe, dim = started
    try:
        limits = HostLimits(args.max_inflight or 0, args.max_body_bytes, args.body_timeout)
        app = create_app(
            pipe,
            limits=limits,
            embedding_dim=dim,
            snapshot_dir=args.snapshot_dir,
            snapshot_every_s=args.snapshot_every,
            snapshot_keep=args.snapshot_keep,
        )
        config = uvicorn.Config(
            app,
            log_level=args.log_level,
            access_log=args.access_log,
            timeout_graceful_shutdown=args.drain_timeout,
        )
        print(
            f"serving {pipe.stats()['store_items']:,} items on http://{args.host}:{args.port} "
            f"(max in flight {app.state.host.admission.limit}; API at /docs)",
            file=sys.stderr,
        )
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:  # SIGINT re-raised by uvicorn after its orderly shutdown
            pass
    finally:
        pipe.close()  # idempotent: the lifespan shutdown already closed it unless forced
        sock.close()
    print("fyp-core serve: stopped, event log closed", file=sys.stderr)
    return 0
