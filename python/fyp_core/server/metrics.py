"""Prometheus metrics of the reference host, named by the Prometheus conventions: durations in
seconds (histogram buckets around the 200 ms SLO), cumulative counts as `*_total` counters read
from the pipeline at scrape time, versions as labels on `*_info` gauges, no sentinel values."""

from __future__ import annotations

import math
import time
from typing import Any, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Metrics", "MetricsMiddleware", "REQUEST_BUCKETS", "STAGE_BUCKETS"]

# fine below the 20 ms budget, then around the 200 ms SLO, then the tail
REQUEST_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.1, 0.5)


class _PipelineCollector(Collector):
    """Reads the pipeline's own cumulative counters and gauges at scrape time."""

    def __init__(self, pipeline: Any, admission: Any) -> None:
        self._pipeline, self._admission = pipeline, admission

    def collect(self) -> Iterator[Any]:
        st = self._pipeline.stats()
        yield GaugeMetricFamily(
            "fyp_index_items", "Items in the candidate index", value=st.get("index_items", 0)
        )
        yield GaugeMetricFamily(
            "fyp_fresh_retrieval_ratio",
            "Share of requests whose candidates held a fresh item",
            value=st.get("fresh_retrieval_rate", 0.0),
        )
        if "log_queue_depth" in st:  # only with an event log attached
            yield GaugeMetricFamily(
                "fyp_event_log_queue_depth",
                "Records waiting in the event log queue",
                value=st["log_queue_depth"],
            )
            yield CounterMetricFamily(
                "fyp_event_log_rows_dropped",
                "Sampled log rows dropped under backpressure",
                value=st.get("log_dropped", 0),
            )
        if "log_not_durable" in st:
            yield CounterMetricFamily(
                "fyp_event_log_not_durable",
                "Durable rows acknowledged while their write-ahead append failed (in memory only)",
                value=st["log_not_durable"],
            )
        if "log_rows_rejected" in st:
            yield CounterMetricFamily(
                "fyp_event_log_rows_rejected",
                "Log rows the event log refused (invalid, or the log closed): missing from the log",
                value=st["log_rows_rejected"],
            )
        versions = getattr(self._pipeline, "model_versions", None)
        if versions is not None:
            info = GaugeMetricFamily(
                "fyp_model_info",
                "Ranker versions in use (role: live | shadow)",
                labels=["role", "version"],
            )
            info.add_metric(["live", versions["live"]], 1)
            for v in versions["shadows"]:
                info.add_metric(["shadow", v], 1)
            yield info
        for key, name, doc in (
            ("requests", "fyp_feed_requests", "feed() calls served by the pipeline"),
            ("slots", "fyp_feed_slots", "Slots served"),
            ("exploration_slots", "fyp_feed_exploration_slots", "Exploration slots served"),
            ("relaxed_responses", "fyp_feed_relaxed_responses", "Responses that relaxed a rule"),
        ):
            if key in st:
                yield CounterMetricFamily(name, doc, value=st[key])
        yield from self._redis(st.get("redis"))
        yield from self._snapshots(st.get("snapshots"))
        yield from self._freshness()

    def _redis(self, redis: Any) -> Iterable[Any]:
        if redis is None:  # Redis configured: report it; otherwise say nothing about it
            return
        yield GaugeMetricFamily(
            "fyp_redis_available",
            "1 while the shared Redis tier answers",
            value=float(redis["available"]),
        )
        yield CounterMetricFamily(
            "fyp_redis_fallbacks",
            "Feature reads served from the in-process snapshot because Redis failed or was down",
            value=redis["fallbacks"],
        )
        yield CounterMetricFamily(
            "fyp_redis_errors",
            "Redis read and write errors",
            value=redis["read_errors"] + redis["write_errors"],
        )
        for key, doc in (
            ("catalog_published", "Catalogue changes this host published to the stream"),
            ("catalog_publish_failures", "Catalogue changes that could not be published"),
            ("catalog_applied", "Other hosts' catalogue changes applied here"),
            ("catalog_gaps", "Times entries were trimmed before this host read them"),
            (
                "catalog_superseded",
                "Other hosts' entries passed over: this host published a newer change",
            ),
            ("catalog_republished", "Changes published late, after the stream was unreachable"),
            ("catalog_pending_dropped", "Unpublished changes dropped over the pending bound"),
        ):
            yield CounterMetricFamily(f"fyp_{key}", doc, value=redis[key])
        yield GaugeMetricFamily(
            "fyp_catalog_pending",
            "Catalogue changes made here and not yet published (the stream was unreachable)",
            value=redis["catalog_pending"],
        )

    def _snapshots(self, snap: Any) -> Iterable[Any]:
        if snap is None:
            return
        for key, doc in (
            ("written", "Host snapshots written"),
            ("write_failures", "Host snapshot writes that failed"),
            ("loads", "Host snapshots installed (at start, or after a stream gap)"),
            (
                "fallbacks",
                "Snapshots refused at load (corrupt or truncated): an older one was used",
            ),
            (
                "gap_reloads",
                "Snapshot reloads after the catalogue stream was trimmed past this host",
            ),
            ("gap_reload_failures", "Stream gaps no snapshot could cover"),
        ):
            yield CounterMetricFamily(f"fyp_snapshot_{key}", doc, value=snap[key])
        yield GaugeMetricFamily(
            "fyp_snapshot_last_cut_ms",
            "Milliseconds uploads waited for the last snapshot's consistent cut",
            value=snap["last_cut_ms"],
        )

    def _freshness(self) -> Iterable[Any]:
        if not hasattr(self._pipeline, "freshness"):
            return
        age = GaugeMetricFamily(
            "fyp_feature_age_seconds",
            "Age of each feature tier's newest data (absent: no data yet)",
            labels=["tier"],
        )
        p99 = GaugeMetricFamily(
            "fyp_feature_age_p99_seconds",
            "p99 over recent requests of each tier's data age",
            labels=["tier"],
        )
        stale = GaugeMetricFamily(
            "fyp_feature_stale",
            "1 when a tier's data is older than 2x its cadence",
            labels=["tier"],
        )
        for tier, f in self._pipeline.freshness().items():
            # a tier that never had data has no age: omit the series rather than invent one
            if math.isfinite(f["age_s"]):
                age.add_metric([tier], f["age_s"])
            if math.isfinite(f["p99_age_s"]):
                p99.add_metric([tier], f["p99_age_s"])
            stale.add_metric([tier], float(f["alert"]))
        yield from (age, p99, stale)


class Metrics:
    """The host's registry: request histograms and counters, per-feed observations and the
    pipeline collector, plus the process and platform collectors."""

    def __init__(self, pipeline: Any, admission: Any, version: str = "0") -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(_PipelineCollector(pipeline, admission))
        self.duration = Histogram(
            "fyp_request_duration_seconds",
            "Time from request start to last response byte, by endpoint and status",
            ["endpoint", "status"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "fyp_feed_stage_duration_seconds",
            "feed() time per pipeline stage",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.server_errors = Counter(
            "fyp_http_server_errors",
            "Responses with a 5xx status other than shedding (503)",
            ["endpoint"],
            registry=r,
        )
        self.shed_total = Counter(
            "fyp_requests_shed", "Requests answered 503 at --max-inflight", ["endpoint"], registry=r
        )
        self.rejected = Counter(
            "fyp_requests_rejected",
            "Requests refused before the pipeline: 4xx by reason",
            ["endpoint", "reason"],
            registry=r,
        )
        self.inflight = Gauge("fyp_inflight_requests", "Pipeline calls in flight", registry=r)
        self.max_inflight = Gauge("fyp_max_inflight", "Configured --max-inflight", registry=r)
        self.max_inflight.set(admission.limit)
        self.build = Gauge("fyp_build_info", "fyp-core build", ["version"], registry=r)
        self.build.labels(version).set(1)

    def shed(self, endpoint: str) -> None:
        self.shed_total.labels(endpoint).inc()

    def observe_feed(self, resp: Any) -> None:
        for stage, ms in resp.timings.items():
            self.stage.labels(stage).observe(ms / 1e3)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


_REASONS = {
    400: "invalid",
    404: "not_found",
    405: "method",
    408: "body_timeout",
    413: "body_too_large",
    422: "invalid",
}


class MetricsMiddleware:
    """Pure ASGI middleware: observes every HTTP request's duration by endpoint and status.
    Endpoints are the app's route paths; anything else is labelled "other" (bounded cardinality)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: Iterable[str]) -> None:
        self.app, self.metrics, self.endpoints = app, metrics, frozenset(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in self.endpoints else "other"
            m = self.metrics
            m.duration.labels(endpoint, str(status)).observe(time.perf_counter() - t0)
            if status >= 500 and status != 503:
                m.server_errors.labels(endpoint).inc()
            elif status in _REASONS:
                m.rejected.labels(endpoint, _REASONS[status]).inc()
