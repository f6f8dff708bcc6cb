"""Requests are bounded: a body is read (size and time limited) and parsed off the event loop
before it may take an in-flight slot, so slow or huge bodies never starve real traffic; inputs
that once crashed a handler are 4xx with a JSON body; readiness reflects shedding."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from _serve_proc import ThreadServer
from fastapi.testclient import TestClient
from test_pipeline import build

from fyp_core.server import HostLimits, create_app, default_max_inflight
from fyp_core.synth import make_world

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def pipe():
    return build(make_world(n_items=3000, n_users=200, seed=5, now=1.8e9), candidates=200)


@pytest.fixture(scope="module")
def client(pipe):
    return TestClient(create_app(pipe, limits=HostLimits(max_inflight=4)))


def _partial_body_socket(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        b"POST /feed HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b'Content-Length: 200\r\n\r\n{"user_id": "slow'
    )
    return s


def _read_response(s: socket.socket) -> bytes:
    """One whole HTTP response: the head and its Content-Length body may arrive in separate
    segments (the host sets TCP_NODELAY), so one recv can return the head alone."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return buf
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_slow_bodies_hold_no_slot_and_time_out(pipe) -> None:
    limits = HostLimits(max_inflight=4, body_timeout_s=1.5)
    with ThreadServer(create_app(pipe, limits=limits, close_on_shutdown=False)) as srv:
        slow = [_partial_body_socket(srv.port) for _ in range(64)]
        time.sleep(0.3)  # every slow request is now waiting for the rest of its body
        with httpx.Client(timeout=10) as c:
            codes = [
                c.post(
                    f"{srv.base}/feed", json={"user_id": "u1", "request_id": f"s-{i}"}
                ).status_code
                for i in range(10)
            ]
            ready = c.get(f"{srv.base}/healthz")
        assert codes == [200] * 10
        assert ready.status_code == 200 and ready.json()["status"] == "ok"
        slow[0].settimeout(5)
        head = _read_response(slow[0])
        assert head.startswith(b"HTTP/1.1 408"), head[:100]
        assert b"not received within" in head
        for s in slow:
            s.close()


@pytest.mark.parametrize("chunked", [False, True])
def test_body_above_the_limit_is_413(pipe, chunked) -> None:
    client = TestClient(create_app(pipe, limits=HostLimits(max_inflight=4, max_body_bytes=4096)))
    body = json.dumps({"user_id": "u", "request_id": "big", "pad": "x" * 10_000}).encode()
    content = iter([body[:5000], body[5000:]]) if chunked else body
    r = client.post("/feed", content=content, headers=JSON)
    assert r.status_code == 413
    assert "4096" in r.json()["error"]


@pytest.mark.parametrize(
    ("route", "raw", "fragment"),
    [
        (
            "/engage",
            b'{"impression_id": "x:0", "watched_seconds": ' + b"9" * 401 + b"}",
            "watched_seconds",
        ),
        (
            "/upload",
            b'{"item_id": 1, "topic": 0, "creator": 0, "embedding": [' + b"9" * 401 + b"]}",
            "embedding",
        ),
        ("/upload", b'{"item_id": 1, "topic": 0, "creator": 0, "embedding": [1e300]}', "embedding"),
        ("/feed", b"[" * 100_000 + b"]" * 100_000, "nests deeper"),
        ("/feed", b'{"user_id": "u", "request_id": "r", "n": ' + b"1" * 5000 + b"}", "JSON"),
        ("/feed", b'{"user_id": "\xff"}', "UTF-8"),
    ],
)
def test_inputs_that_crashed_are_4xx_json(client, route, raw, fragment) -> None:
    r = client.post(route, content=raw, headers=JSON)
    assert 400 <= r.status_code < 500, r.text
    assert fragment in r.json()["error"]


def test_unknown_route_and_method_are_json(client) -> None:
    r = client.get("/nowhere")
    assert r.status_code == 404 and "/docs" in r.json()["error"]
    r = client.get("/feed")
    assert r.status_code == 405 and "GET" in r.json()["error"]


def test_json_is_parsed_on_a_worker_thread(client, monkeypatch) -> None:
    import fyp_core.server.limits as limits

    seen: list[str] = []
    real = limits.json.loads

    def spy(raw):
        seen.append(threading.current_thread().name)
        return real(raw)

    monkeypatch.setattr(limits.json, "loads", spy)
    r = client.post("/feed", json={"user_id": "u", "request_id": "thread-1"})
    assert r.status_code == 200
    assert seen and all("AnyIO worker" in name for name in seen), seen


def test_readiness_reports_shedding(pipe) -> None:
    gate = threading.Event()

    class Slow:
        def __getattr__(self, name):
            return getattr(pipe, name)

        def feed(self, *a, **k):
            gate.wait(10)
            return pipe.feed(*a, **k)

    client = TestClient(create_app(Slow(), max_inflight=1))
    held = threading.Thread(
        target=client.post, args=("/feed",), kwargs={"json": {"user_id": "u", "request_id": "h"}}
    )
    held.start()
    try:
        deadline = time.monotonic() + 10
        while client.get("/healthz").json()["inflight"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = client.post("/feed", json={"user_id": "u", "request_id": "h2"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        h = client.get("/healthz")
        assert h.status_code == 503 and h.json()["status"] == "shedding"
    finally:
        gate.set()
        held.join()


def test_default_max_inflight_stays_inside_the_worker_pool(pipe) -> None:
    assert default_max_inflight(2) == 8
    assert default_max_inflight(64) <= 32
    app = create_app(pipe)
    assert 1 <= app.state.host.admission.limit <= 32
