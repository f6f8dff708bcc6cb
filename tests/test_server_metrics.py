"""/metrics follows the Prometheus conventions and tells the truth: a scrape under load parses,
the request histogram (seconds) agrees with what clients measured, counters are `*_total`,
versions are labels, and nothing is reported that is not there (no sentinel ages, no Redis when
Redis is not configured)."""

from __future__ import annotations

import math
import threading
import time

import httpx
import pytest
from _serve_proc import ServeProcess
from prometheus_client.parser import text_string_to_metric_families
from test_pipeline import build

from fyp_core import __version__
from fyp_core.server import create_app
from fyp_core.synth import make_world


@pytest.fixture(scope="module")
def pipe():
    return build(make_world(n_items=3000, n_users=200, seed=7, now=1.8e9), candidates=200)


def _samples(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _load(base: str, n: int, worker: int, lat: list[float]) -> None:
    with httpx.Client(timeout=10) as c:
        for i in range(n):
            t = time.perf_counter()
            r = c.post(f"{base}/feed", json={"user_id": f"u{i}", "request_id": f"m{worker}-{i}"})
            lat.append(time.perf_counter() - t)
            assert r.status_code == 200


def test_scrape_under_load_agrees_with_the_clients() -> None:
    srv = ServeProcess()
    try:
        srv.wait_ready()
        lat: list[float] = []
        workers = [threading.Thread(target=_load, args=(srv.base, 40, w, lat)) for w in range(4)]
        for w in workers:
            w.start()
        with httpx.Client(timeout=10) as c:
            mid = c.get(f"{srv.base}/metrics")  # while the load runs
            for w in workers:
                w.join()
            text = c.get(f"{srv.base}/metrics").text
    finally:
        srv.stop()
    assert mid.status_code == 200 and _samples(mid.text)
    s = _samples(text)
    feed_ok = {"endpoint": "/feed", "status": "200"}
    count = next(x.value for x in s["fyp_request_duration_seconds_count"] if x.labels == feed_ok)
    total = next(x.value for x in s["fyp_request_duration_seconds_sum"] if x.labels == feed_ok)
    assert count == len(lat) == 160
    # the server's span of a request sits inside the client's and holds the pipeline's own
    # stages: stage time <= server time <= client time, all in seconds
    stages = sum(x.value for x in s["fyp_feed_stage_duration_seconds_sum"])
    assert 0 < stages <= total <= sum(lat)
    buckets = [
        x
        for x in s["fyp_request_duration_seconds_bucket"]
        if x.labels == {**feed_ok, "le": x.labels["le"]}
    ]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == count
    for b in buckets:
        assert b.value >= sum(1 for t in lat if t <= float(b.labels["le"])), b.labels["le"]
    assert any(b.labels["le"] == "0.2" for b in buckets)  # a bucket edge at the 200 ms SLO


def test_names_labels_and_no_invented_values(pipe) -> None:
    from fastapi.testclient import TestClient

    client = TestClient(create_app(pipe, max_inflight=4))
    client.post("/feed", json={"user_id": "u", "request_id": "names-1"})
    client.post("/engage", json={"impression_id": "nope:0"})
    text = client.get("/metrics").text
    s = _samples(text)
    assert "fyp_request_latency_ms_bucket" not in s
    assert s["fyp_build_info"][0].labels["version"] == __version__
    assert {"role": "live", "version": "v1"} in [x.labels for x in s["fyp_model_info"]]
    assert "process_cpu_seconds_total" in s and "process_resident_memory_bytes" in s
    assert "fyp_feed_requests_total" in s
    assert not any(x.value for x in s.get("fyp_requests_shed_total", []))
    assert any(
        x.labels == {"endpoint": "/engage", "reason": "not_found"}
        for x in s["fyp_requests_rejected_total"]
    )
    for fam in text_string_to_metric_families(text):
        if fam.type == "counter":
            assert all(x.name.endswith(("_total", "_created")) for x in fam.samples), fam.name
        for x in fam.samples:
            assert math.isnan(x.value) or x.value < 1e11, (x.name, x.value)
    assert "redis" not in text.lower()  # not configured: not reported
