"""The reference HTTP host: validation (4xx, never 500), 503 under overload, /metrics format."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from starlette.testclient import TestClient
from test_pipeline import build

from fyp_core.server import create_app
from fyp_core.synth import make_world


@pytest.fixture(scope="module")
def pipe():
    return build(make_world(n_items=3000, n_users=200, seed=4, now=1.8e9), candidates=200)


@pytest.fixture(scope="module")
def client(pipe):
    return TestClient(create_app(pipe, max_inflight=8))


def test_feed_engage_upload_roundtrip(client, pipe) -> None:
    r = client.post("/feed", json={"user_id": "user-1", "request_id": "h-1", "n": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["slots"]) == 10 and body["slots"][0]["impression_id"] == "h-1:0"
    imp = body["slots"][3]["impression_id"]
    assert (
        client.post(
            "/engage", json={"impression_id": imp, "completed": True, "watched_seconds": 12.5}
        ).status_code
        == 200
    )
    emb = np.ones(64, dtype=np.float32) / 8
    r = client.post(
        "/upload", json={"item_id": 99_999_999, "embedding": emb.tolist(), "topic": 3, "creator": 7}
    )
    assert r.status_code == 200, r.text
    assert client.get("/healthz").json()["ok"] is True


@pytest.mark.parametrize(
    ("route", "body", "fragment"),
    [
        ("/feed", {"request_id": "x"}, "missing field 'user_id'"),
        ("/feed", {"user_id": "u", "request_id": "x", "n": 0}, "'n'"),
        ("/feed", {"user_id": "u", "request_id": "x", "n": "5"}, "must be int"),
        ("/feed", {"user_id": 5, "request_id": "x"}, "must be str"),
        ("/engage", {"impression_id": "nope"}, "unknown impression_id"),
        ("/engage", {"impression_id": "x", "watched_seconds": -1}, ">= 0"),
        ("/engage", {"impression_id": "x", "liked": "yes"}, "must be bool"),
        ("/upload", {"item_id": 1, "embedding": [1.0, 2.0], "topic": 0, "creator": 0}, "embedding"),
        (
            "/upload",
            {"item_id": 1, "embedding": ["a"], "topic": 0, "creator": 0},
            "list of numbers",
        ),
        ("/upload", {"item_id": -1, "embedding": [1.0], "topic": 0, "creator": 0}, "item_id"),
    ],
)
def test_client_mistakes_are_4xx_with_a_message(client, route, body, fragment) -> None:
    r = client.post(route, json=body)
    assert 400 <= r.status_code < 500, r.text
    assert fragment in r.json()["error"]


def test_malformed_json_is_400(client) -> None:
    r = client.post("/feed", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = client.post("/feed", json=[1, 2])
    assert r.status_code == 400


def test_overload_answers_503_quickly(pipe) -> None:
    gate = threading.Event()

    class Slow:
        def __getattr__(self, name):
            return getattr(pipe, name)

        def feed(self, *a, **k):
            gate.wait(5)
            return pipe.feed(*a, **k)

    client = TestClient(create_app(Slow(), max_inflight=1))
    results: list[int] = []
    t = threading.Thread(
        target=lambda: results.append(
            client.post("/feed", json={"user_id": "u", "request_id": "slow-1"}).status_code
        )
    )
    t.start()
    for _ in range(200):  # wait until the first request holds the only slot
        r = client.get("/metrics")
        if "fyp_inflight_requests 1.0" in r.text:
            break
    r = client.post("/feed", json={"user_id": "u", "request_id": "slow-2"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    gate.set()
    t.join()
    assert results == [200]


def test_metrics_prometheus_format(client) -> None:
    client.post("/feed", json={"user_id": "user-2", "request_id": "m-1"})
    text = client.get("/metrics").text
    for name in (
        "fyp_request_latency_ms_bucket",
        "fyp_feed_stage_latency_ms_bucket{",
        "fyp_exploration_share",
        "fyp_index_items",
        "fyp_event_log_queue_depth",
        "fyp_event_log_not_durable",
        "fyp_fresh_retrieval_rate",
        'fyp_feature_age_seconds{tier="real_time"}',
        'fyp_feature_age_p99_seconds{tier="near_real_time"}',
        'fyp_feature_stale{tier="batch"}',
    ):
        assert name in text, name
    assert 'stage="ranker"' in text
    # the NRT tier has absorbed the request just served: a finite, small age
    line = next(x for x in text.splitlines() if x.startswith('fyp_feature_age_seconds{tier="near'))
    assert float(line.split()[-1]) < 3600
