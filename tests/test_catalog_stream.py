"""Several serving hosts as one catalogue: uploads and take-downs published to the Redis
catalogue stream reach every pipeline sharing the namespace (`FeedPipeline.sync_catalog`),
idempotently, and a host that missed trimmed entries is told so."""

from __future__ import annotations

import subprocess
import sys
import uuid

import numpy as np
import pytest
from _redis import SKIP, Server, _free_port
from conftest import build_pipeline

from fyp_core import FeedPipeline, HnswIndex, MlpRanker, Reranker, TrafficSplit
from fyp_core.catalog import Catalogue
from fyp_core.synth import demo_ranker_weights, make_world

pytestmark = SKIP
NOW = 1.8e9
KEY = b"catalog-stream-test-key"


@pytest.fixture(scope="module")
def server():
    s = Server(_free_port())
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def world():
    return make_world(n_items=1500, n_users=50, dim=8, n_creators=100, seed=4, now=NOW)


def host(world, url, ns) -> FeedPipeline:
    config = {"candidates": 100, "fresh_max_age_s": 3600.0, "fresh_budget": 0.5}
    return build_pipeline(
        world, explore_rate=0.0, config=config, key=KEY, redis_url=url, redis_namespace=ns
    )


def test_an_upload_on_one_host_is_servable_on_the_others(server, world) -> None:
    ns = uuid.uuid4().hex[:12]
    a, b, c = (host(world, server.url, ns) for _ in range(3))
    emb = np.ones(world.dim, dtype=np.float32) / np.sqrt(world.dim)
    a.upload(10**9, emb, topic=1, creator=5, ts=NOW)
    a.upload(10**9 + 1, emb, topic=2, creator=5, ts=NOW)
    assert a.sync_catalog() == {
        "applied": 0,
        "own": 2,
        "gap": False,
        "reloaded": False,
        "superseded": 0,
        "position": a.sync_catalog()["position"],
    }
    for h in (b, c):
        r = h.sync_catalog()
        assert r["applied"] == 2 and r["own"] == 0 and not r["gap"]
        assert h.stats()["store_items"] == world.n_items + 2
        # in the fresh pool and the index at once: the next request's candidates hold them
        h.feed("someone-new", f"r-{id(h)}", n=20, now=NOW + 5)
        assert None not in h.first_candidate_times([10**9, 10**9 + 1])
        assert h.sync_catalog()["applied"] == 0  # nothing new: idempotent position
    # a take-down on B reaches A and C
    b.remove([10**9], now=NOW + 10)
    for h in (a, c):
        assert h.sync_catalog()["applied"] == 1
        assert h.stats()["store_items"] == world.n_items + 1
    st = a.stats()["redis"]
    assert st["catalog_published"] == 2 and st["catalog_applied"] == 1
    assert st["catalog_publish_failures"] == 0 and st["catalog_gaps"] == 0


def test_a_new_host_replays_the_stream_and_ends_with_the_same_items(server, world) -> None:
    ns = uuid.uuid4().hex[:12]
    a = host(world, server.url, ns)
    rng = np.random.default_rng(0)
    for k in range(30):
        a.upload(
            2 * 10**9 + k,
            rng.normal(size=world.dim).astype(np.float32),
            topic=k % 5,
            creator=k,
            ts=NOW + k,
        )
    a.remove([2 * 10**9 + 3, 2 * 10**9 + 7], now=NOW + 40)
    late = host(world, server.url, ns)
    assert late.sync_catalog(max_entries=10)["applied"] == 10  # bounded batches
    while late.sync_catalog(max_entries=10)["applied"]:
        pass
    assert late.stats()["store_items"] == a.stats()["store_items"] == world.n_items + 28
    # applying the same entries again (a restart from position 0) changes nothing
    again = host(world, server.url, ns)
    again.sync_catalog(max_entries=100_000)
    again.sync_catalog(max_entries=100_000)
    assert again.stats()["store_items"] == world.n_items + 28


def test_the_last_change_per_item_in_stream_order_wins_on_every_host(server, world) -> None:
    """B takes item X down; A, not yet synced, re-uploads X (a later stream entry). A must not
    apply B's older take-down over its newer upload: both hosts end with X live."""
    ns = uuid.uuid4().hex[:12]
    a, b = host(world, server.url, ns), host(world, server.url, ns)
    x = 8 * 10**9
    emb = np.ones(world.dim, dtype=np.float32)
    a.upload(x, emb, topic=1, creator=1, ts=NOW)
    assert b.sync_catalog()["applied"] == 1
    a.sync_catalog()
    b.remove([x], now=NOW + 1)
    a.upload(x, emb, topic=2, creator=1, ts=NOW + 2)
    r = a.sync_catalog()
    assert r["superseded"] == 1 and r["applied"] == 0
    assert b.sync_catalog()["applied"] == 1
    assert a.catalog_digest() == b.catalog_digest()
    assert a.stats()["store_items"] == b.stats()["store_items"] == world.n_items + 1
    assert a.stats()["redis"]["catalog_superseded"] == 1


def test_a_trimmed_stream_is_reported_as_a_gap(server, world) -> None:
    ns = uuid.uuid4().hex[:12]
    a, b = host(world, server.url, ns), host(world, server.url, ns)
    emb = np.ones(world.dim, dtype=np.float32)
    a.upload(3 * 10**9, emb, topic=1, creator=1, ts=NOW)
    assert b.sync_catalog()["applied"] == 1
    for k in range(1, 6):
        a.upload(3 * 10**9 + k, emb, topic=1, creator=1, ts=NOW)
    # trim everything but the newest entry (an operator's XTRIM, or MAXLEN under a flood)
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import socket,sys;s=socket.create_connection(('127.0.0.1',"
            f"{server.port}));s.sendall(b'XTRIM fyp:{ns}:catalog MAXLEN 1\\r\\n');s.recv(64)",
        ],
        check=True,
    )
    r = b.sync_catalog()
    assert r["gap"] and r["applied"] == 1
    assert b.stats()["redis"]["catalog_gaps"] == 1
    assert not b.sync_catalog()["gap"]  # reported once
    # a host that joins after the trim missed the trimmed uploads too
    late = host(world, server.url, ns)
    assert late.sync_catalog()["gap"]


def test_without_redis_sync_is_a_no_op(world) -> None:
    cat = Catalogue.from_world(world)
    index = HnswIndex(cat.dim)
    index.add(cat.item_ids, cat.item_embeddings)
    w, b, o = demo_ranker_weights(cat.dim)
    pipe = FeedPipeline(
        index, MlpRanker(w, b, outputs=o), Reranker({}), TrafficSplit(0.0), user_token_key=KEY
    )
    assert pipe.sync_catalog() == {
        "applied": 0,
        "own": 0,
        "gap": False,
        "reloaded": False,
        "superseded": 0,
        "position": "",
    }
    with pytest.raises(ValueError, match="max_entries"):
        pipe.sync_catalog(max_entries=0)


def test_the_host_applies_other_hosts_uploads_in_the_background(server, world) -> None:
    import time

    from fastapi.testclient import TestClient

    from fyp_core.server import create_app

    ns = uuid.uuid4().hex[:12]
    a, b = host(world, server.url, ns), host(world, server.url, ns)
    with TestClient(create_app(b, catalog_sync_s=0.05)) as client:
        t0 = time.monotonic()
        a.upload(4 * 10**9, np.ones(world.dim, dtype=np.float32), topic=1, creator=1, ts=NOW)
        while b.stats()["store_items"] == world.n_items and time.monotonic() - t0 < 5:
            time.sleep(0.01)
        lag = time.monotonic() - t0
        assert b.stats()["store_items"] == world.n_items + 1, "not applied within 5 s"
        assert lag < 1.0, f"upload on A servable on B after {lag:.2f} s"
        text = client.get("/metrics").text
        assert "fyp_catalog_applied_total 1.0" in text


def test_real_hosts_share_uploads_over_redis(server, world) -> None:
    """Two `fyp-core serve` processes on one Redis namespace: an upload sent to A over HTTP is
    applied by B's background sync (its /metrics counts it) within a second."""
    import time

    import httpx
    from _serve_proc import ServeProcess

    ns = uuid.uuid4().hex[:12]
    extra = ["--redis-url", server.url, "--redis-namespace", ns]
    a, b = ServeProcess(extra), ServeProcess(extra)
    try:
        a.wait_ready()
        b.wait_ready()
        body = {"item_id": 9_000_000_001, "embedding": [0.1] * 64, "topic": 3, "creator": 7}
        with httpx.Client(timeout=10.0) as c:
            assert c.post(f"{a.base}/upload", json=body).status_code == 200, a.output()
            t0 = time.monotonic()
            applied = ""
            while time.monotonic() - t0 < 5:
                text = c.get(f"{b.base}/metrics").text
                applied = next(
                    (ln for ln in text.splitlines() if ln.startswith("fyp_catalog_applied_total")),
                    "",
                )
                if applied.endswith(" 1.0"):
                    break
                time.sleep(0.05)
            lag = time.monotonic() - t0
        assert applied.endswith(" 1.0"), applied
        assert lag < 1.0, f"upload on A applied on B after {lag:.2f} s"
    finally:
        for p in (a, b):
            p.signal()
            p.wait()


def _sync_when_up(h: FeedPipeline, timeout_s: float = 10.0) -> dict:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return h.sync_catalog()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_redis_down_hosts_keep_serving_and_catch_up_after_it_returns(world) -> None:
    """Redis stops: both hosts keep serving what they have, an upload on A is served by A at
    once and waits in A's pending queue (counted), B's sync fails (counted by the host thread,
    raised here). Redis returns on the same port: A's next sync publishes the outage's changes
    in order and B's sync applies them, so both end with the same items."""
    srv = Server(_free_port())
    srv.start()
    ns = uuid.uuid4().hex[:12]
    try:
        a, b = host(world, srv.url, ns), host(world, srv.url, ns)
        emb = np.ones(world.dim, dtype=np.float32) / np.sqrt(world.dim)
        srv.stop()
        a.upload(7 * 10**9, emb, topic=1, creator=5, ts=NOW)
        a.upload(7 * 10**9 + 1, emb, topic=1, creator=5, ts=NOW)
        a.remove([7 * 10**9 + 1], now=NOW + 1)
        st = a.stats()["redis"]
        assert st["catalog_pending"] == 3 and st["catalog_publish_failures"] == 3
        for i, h in enumerate((a, b)):
            assert len(h.feed("someone", f"down-{i}", n=10, now=NOW + 2).item_ids) == 10
        assert a.stats()["store_items"] == world.n_items + 1  # served by A at once
        with pytest.raises(OSError):
            b.sync_catalog()
        srv.start()  # back on the same port, empty (no persistence): the stream starts over
        # the tier backs off for a second after a failure; the host's sync thread retries
        assert _sync_when_up(a)["own"] == 3
        st = a.stats()["redis"]
        assert st["catalog_pending"] == 0 and st["catalog_republished"] == 3
        r = _sync_when_up(b)
        assert r["applied"] == 3 and not r["gap"]
        assert b.stats()["store_items"] == world.n_items + 1
        b.feed("someone-new", "up-1", n=20, now=NOW + 5)
        assert b.first_candidate_times([7 * 10**9])[0] is not None
    finally:
        srv.stop()
