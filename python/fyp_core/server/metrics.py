"""Prometheus metrics of the reference host."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_BUCKETS_MS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000)


class Metrics:
    def __init__(self, pipeline: Any, admission: Any = None) -> None:
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

    def shed(self, route: str) -> None:
        self.rejected.inc()
        self.requests.labels(route.strip("/"), "503").inc()

    def render(self) -> tuple[bytes, str]:
        st = self._pipeline.stats()
        self.index_size.set(st.get("index_items", 0))
        self.fresh_rate.set(st.get("fresh_retrieval_rate", 0.0))
        self.queue_depth.set(st.get("log_queue_depth", 0))
        self.log_dropped.set(st.get("log_dropped", 0))
        if "redis" in st:
            self.redis_available.set(float(st["redis"]["available"]))
            self.redis_fallbacks.set(st["redis"]["fallbacks"])
        if hasattr(self._pipeline, "freshness"):
            for tier, f in self._pipeline.freshness().items():
                # a tier that never had data has an infinite age: export a large finite number
                self.feature_age.labels(tier).set(min(f["age_s"], 1e12))
                self.feature_age_p99.labels(tier).set(min(f["p99_age_s"], 1e12))
                self.feature_stale.labels(tier).set(float(f["alert"]))
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
