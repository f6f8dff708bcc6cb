"""An orderly stop of ``fyp-core serve`` loses no data: SIGTERM or SIGINT under load drains the
in-flight requests, then flushes and closes the event log, so every row behind every response a
client received is in the Parquet log."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest
from _serve_proc import ServeProcess

from fyp_core.analytics import read_table


def _load(base: str, stop: threading.Event, got: list[dict], worker: int) -> None:
    i = 0
    with httpx.Client(timeout=10.0) as c:
        while not stop.is_set():
            rid = f"w{worker}-r{i}"
            i += 1
            try:
                r = c.post(f"{base}/feed", json={"user_id": f"u{i % 50}", "request_id": rid})
            except httpx.HTTPError:
                return  # the server closed the connection: it is stopping
            if r.status_code == 200:
                got.append(r.json())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_orderly_stop_under_load_loses_no_row(tmp_path, sig) -> None:
    log_dir = str(tmp_path / "log")
    srv = ServeProcess(log_dir=log_dir)
    try:
        srv.wait_ready()
        stop = threading.Event()
        got: list[dict] = []
        threads = [threading.Thread(target=_load, args=(srv.base, stop, got, w)) for w in range(4)]
        for t in threads:
            t.start()
        while len(got) < 40:
            time.sleep(0.05)
        srv.signal(sig)
        t0 = time.monotonic()
        rc = srv.wait(timeout_s=30)
        stopped_s = time.monotonic() - t0
        stop.set()
        for t in threads:
            t.join()
    finally:
        srv.stop()
    assert rc == 0, srv.output()
    assert stopped_s < 15
    served = {s["impression_id"] for r in got for s in r["slots"]}
    requests = {r["request_id"] for r in got}
    logged = set(read_table(log_dir, "impressions", ["impression_id"])["impression_id"].to_pylist())
    assert len(served) >= 40 * 20
    assert served - logged == set(), f"{len(served - logged)} of {len(served)} impressions lost"
    logged_req = set(read_table(log_dir, "requests", ["request_id"])["request_id"].to_pylist())
    assert requests - logged_req == set()
    scored = read_table(log_dir, "ranker_scores", ["impression_id"])["impression_id"].to_pylist()
    assert served - set(scored) == set()
