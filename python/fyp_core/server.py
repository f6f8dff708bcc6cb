"""``fyp-core serve``: the reference ASGI host embedding one FeedPipeline.

Routes: ``POST /feed``, ``POST /engage``, ``POST /upload``, ``GET /healthz``, ``GET /metrics``
(Prometheus text). Bodies are validated (400 with a message for a client's mistake, never a 500);
concurrency is bounded and overload answers 503 at once instead of queueing without end. The
pipeline releases the GIL, so requests run on a thread pool in parallel.
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any, Callable

import anyio
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

_BUCKETS_MS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000)


class BadRequest(ValueError):
    """A client's mistake: answered with 400 and the message."""


def _field(
    body: dict[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    default: Any = ...,
    check: Callable[[Any], bool] | None = None,
    rule: str = "",
) -> Any:
    if name not in body:
        if default is ...:
            raise BadRequest(f"missing field {name!r}")
        return default
    v = body[name]
    if isinstance(v, bool) and kind in (int, float, (int, float)):
        raise BadRequest(f"field {name!r} must be a number, got a boolean")
    if not isinstance(v, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BadRequest(f"field {name!r} must be {want}, got {type(v).__name__}")
    if isinstance(v, float) and not math.isfinite(v):
        raise BadRequest(f"field {name!r} must be finite")
    if check is not None and not check(v):
        raise BadRequest(f"field {name!r} {rule}")
    return v


class _Metrics:
    def __init__(self, pipeline: Any) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "fyp_request_latency_ms",
            "End-to-end handler latency (ms)",
            ["route"],
            buckets=_BUCKETS_MS,
            registry=r,
        )
        self.stage = Histogram(
            "fyp_feed_stage_latency_ms",
            "feed() latency per stage (ms)",
            ["stage"],
            buckets=_BUCKETS_MS,
            registry=r,
        )
        self.requests = Counter(
            "fyp_requests", "Requests by route and status", ["route", "status"], registry=r
        )
        self.slots = Counter("fyp_slots", "Slots served by source", ["source"], registry=r)
        self.rejected = Counter(
            "fyp_overload_rejections", "Requests answered 503 (overload)", registry=r
        )
        self.inflight = Gauge("fyp_inflight_requests", "Requests being served", registry=r)
        self.explore_share = Gauge(
            "fyp_exploration_share", "Exploration share of served slots", registry=r
        )
        self.fresh_rate = Gauge(
            "fyp_fresh_retrieval_rate",
            "Share of requests whose candidates held a fresh item",
            registry=r,
        )
        self.index_size = Gauge("fyp_index_items", "Items in the candidate index", registry=r)
        self.queue_depth = Gauge(
            "fyp_event_log_queue_depth", "Records waiting in the event log queue", registry=r
        )
        self.log_dropped = Gauge(
            "fyp_event_log_dropped", "Sampled records dropped under backpressure", registry=r
        )
        self.log_not_durable = Gauge(
            "fyp_event_log_not_durable",
            "Durable rows acknowledged while their write-ahead append failed (in memory only)",
            registry=r,
        )
        self.feature_age = Gauge(
            "fyp_feature_age_seconds",
            "Age of each feature tier's newest data",
            ["tier"],
            registry=r,
        )
        self.feature_age_p99 = Gauge(
            "fyp_feature_age_p99_seconds",
            "p99 over recent requests of each tier's data age",
            ["tier"],
            registry=r,
        )
        self.feature_stale = Gauge(
            "fyp_feature_stale",
            "1 when a tier's data is older than 2x its cadence",
            ["tier"],
            registry=r,
        )
        self.redis_available = Gauge(
            "fyp_redis_available", "1 while the shared Redis tier answers", registry=r
        )
        self.redis_fallbacks = Gauge(
            "fyp_redis_fallbacks",
            "Feature reads served from the in-process snapshot because Redis failed or was down",
            registry=r,
        )
        self._pipeline = pipeline
        self._lock = threading.Lock()
        self._slots_total = 0
        self._explore_total = 0

    def observe_feed(self, resp: Any) -> None:
        for stage, ms in resp.timings.items():
            self.stage.labels(stage).observe(ms)
        sources = resp.sources
        with self._lock:
            self._slots_total += len(sources)
            self._explore_total += sum(1 for s in sources if s == "exploration")
            if self._slots_total:
                self.explore_share.set(self._explore_total / self._slots_total)
        for s in set(sources):
            self.slots.labels(s).inc(sources.count(s))

    def render(self) -> bytes:
        st = self._pipeline.stats()
        self.index_size.set(st.get("index_items", 0))
        self.fresh_rate.set(st.get("fresh_retrieval_rate", 0.0))
        self.queue_depth.set(st.get("log_queue_depth", 0))
        self.log_dropped.set(st.get("log_dropped", 0))
        self.log_not_durable.set(st.get("log_not_durable", 0))
        if "redis" in st:
            self.redis_available.set(float(st["redis"]["available"]))
            self.redis_fallbacks.set(st["redis"]["fallbacks"])
        if hasattr(self._pipeline, "freshness"):
            for tier, f in self._pipeline.freshness().items():
                # a tier that never had data has an infinite age: export a large finite number
                self.feature_age.labels(tier).set(min(f["age_s"], 1e12))
                self.feature_age_p99.labels(tier).set(min(f["p99_age_s"], 1e12))
                self.feature_stale.labels(tier).set(float(f["alert"]))
        return generate_latest(self.registry)


def create_app(pipeline: Any, max_inflight: int = 64) -> Starlette:
    """The ASGI app. `max_inflight` bounds concurrent pipeline calls; beyond it: 503."""
    if max_inflight <= 0:
        raise ValueError("max_inflight must be > 0")
    metrics = _Metrics(pipeline)
    inflight = 0
    gate = threading.Lock()

    async def guarded(
        route: str, request: Request, handler: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> Response:
        nonlocal inflight
        with gate:
            if inflight >= max_inflight:
                metrics.rejected.inc()
                metrics.requests.labels(route, "503").inc()
                return JSONResponse(
                    {"error": "overloaded, retry later"},
                    status_code=503,
                    headers={"Retry-After": "1"},
                )
            inflight += 1
            metrics.inflight.set(inflight)
        try:
            with metrics.latency.labels(route).time():
                try:
                    raw = await request.body()
                    body = json.loads(raw) if raw else {}
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise BadRequest(f"body is not valid JSON: {e}") from None
                if not isinstance(body, dict):
                    raise BadRequest("body must be a JSON object")
                out = await anyio.to_thread.run_sync(handler, body)
            metrics.requests.labels(route, "200").inc()
            return JSONResponse(out)
        except BadRequest as e:
            metrics.requests.labels(route, "400").inc()
            return JSONResponse({"error": str(e)}, status_code=400)
        except KeyError as e:
            metrics.requests.labels(route, "404").inc()
            return JSONResponse(
                {"error": str(e.args[0]) if e.args else "not found"}, status_code=404
            )
        except (ValueError, TypeError) as e:  # the library's own validation of the arguments
            metrics.requests.labels(route, "400").inc()
            return JSONResponse({"error": str(e)}, status_code=400)
        finally:
            with gate:
                inflight -= 1
                metrics.inflight.set(inflight)

    def do_feed(body: dict[str, Any]) -> dict[str, Any]:
        user = _field(
            body, "user_id", str, check=lambda s: 0 < len(s) <= 256, rule="must be 1-256 chars"
        )
        req = _field(
            body, "request_id", str, check=lambda s: 0 < len(s) <= 256, rule="must be 1-256 chars"
        )
        n = _field(body, "n", int, 20, check=lambda x: 1 <= x <= 200, rule="must be in [1, 200]")
        resp = pipeline.feed(user, req, n=n)
        metrics.observe_feed(resp)
        return resp.to_dict()

    def do_engage(body: dict[str, Any]) -> dict[str, Any]:
        imp = _field(body, "impression_id", str)
        kw = {
            "watched_seconds": float(
                _field(
                    body,
                    "watched_seconds",
                    (int, float),
                    0.0,
                    check=lambda x: x >= 0,
                    rule="must be >= 0",
                )
            ),
            "completed": _field(body, "completed", bool, False),
            "liked": _field(body, "liked", bool, False),
            "shared": _field(body, "shared", bool, False),
            "followed": _field(body, "followed", bool, False),
        }
        pipeline.engage(imp, **kw)
        return {"ok": True}

    def do_upload(body: dict[str, Any]) -> dict[str, Any]:
        item = _field(
            body, "item_id", int, check=lambda x: 0 <= x < 2**64 - 1, rule="must be in [0, 2**64-1)"
        )
        emb = _field(body, "embedding", list)
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in emb):
            raise BadRequest("field 'embedding' must be a list of numbers")
        topic = _field(
            body, "topic", int, check=lambda x: 0 <= x < 2**31, rule="must be in [0, 2**31)"
        )
        creator = _field(
            body, "creator", int, check=lambda x: 0 <= x < 2**64, rule="must be in [0, 2**64)"
        )
        category = _field(
            body, "category", int, 0, check=lambda x: 0 <= x < 2**31, rule="must be in [0, 2**31)"
        )
        pipeline.upload(item, np.asarray(emb, dtype=np.float32), topic, creator, category=category)
        return {"ok": True}

    async def feed(request: Request) -> Response:
        return await guarded("feed", request, do_feed)

    async def engage(request: Request) -> Response:
        return await guarded("engage", request, do_engage)

    async def upload(request: Request) -> Response:
        return await guarded("upload", request, do_upload)

    async def healthz(request: Request) -> Response:
        st = pipeline.stats()
        return JSONResponse({"ok": True, "items": st.get("index_items", 0)})

    async def metrics_route(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/feed", feed, methods=["POST"]),
            Route("/engage", engage, methods=["POST"]),
            Route("/upload", upload, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_route, methods=["GET"]),
        ]
    )
