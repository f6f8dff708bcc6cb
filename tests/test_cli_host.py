"""``fyp-core demo`` and ``fyp-core serve`` from a fresh interpreter: bad arguments and a busy
port are refused in one line (exit 2) before any build, Ctrl-C stops promptly with one line, and
the demo keeps its log, prints a headline and the next commands."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest
from _serve_proc import cli

# a world big enough that reaching the build would take far longer than the asserted bound
BIG = ["--items", "1000000", "--users", "100000"]


def _run(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    t = time.monotonic()
    out = subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout)
    return out, time.monotonic() - t


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["demo", "--n", "0"], "--n must be in [1, 200], got 0"),
        (["demo", "--explore-rate", "2"], "--explore-rate must be in [0, 1], got 2.0"),
        (["demo", "--requests", "0"], "--requests must be >= 1, got 0"),
        (["serve", "--n", "0"], "--n must be in [1, 200]"),
        (["serve", "--max-inflight", "0"], "--max-inflight must be >= 1"),
        (["serve", "--port", "70000"], "--port must be in [0, 65535]"),
    ],
)
def test_bad_arguments_fail_in_one_line_before_the_build(args, fragment) -> None:
    out, took = _run(*args, *BIG)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fyp-core {args[0]}: {fragment}"), lines
    assert "Traceback" not in out.stderr and took < 20


def test_busy_port_fails_in_one_line_before_the_build() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out, took = _run("serve", *BIG, "--port", str(port))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], out.stderr
    assert took < 20


def test_ctrl_c_stops_the_build_promptly(tmp_path) -> None:
    proc = subprocess.Popen(
        cli("demo", "--items", "400000", "--users", "1000", "--ef-construction", "32"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,  # the demo's log directory goes there, not into the checkout
    )
    time.sleep(4)  # inside the world build or the index build
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    t = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - t < 10
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "fyp-core demo: interrupted"
    assert "Traceback" not in err


def test_demo_keeps_its_log_and_tells_the_story(tmp_path) -> None:
    args = (
        "demo --items 2000 --users 200 --requests 300 --candidates 200 --ef-construction 32 "
        "--explore-rate 0.2 --upload-rate 0"
    ).split()
    out = subprocess.run(cli(*args), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    log = tmp_path / "fyp-demo-log"
    assert any(p.suffix == ".parquet" for p in (log / "impressions").rglob("*"))
    text = out.stdout
    for fragment in (
        "== headline ==",
        "ranked vs exploration lift",
        "95% CI",
        "requests/s",
        "GB peak resident",
        "latency budget",
        "fyp-core report fyp-demo-log --out report.html",
        "fyp-core serve --items 2000 --users 200",
    ):
        assert fragment in text, fragment
    assert ("PASS" in text) != ("FAIL: p99" in text)
    assert os.path.isdir(log)


def test_demo_shows_a_progress_bar_with_eta_for_every_phase(tmp_path) -> None:
    args = (
        "demo --items 3000 --users 300 --requests 200 --candidates 100 --ef-construction 32 "
        "--upload-rate 0"
    ).split()
    out = subprocess.run(cli(*args), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    frames = [f for line in out.stderr.split("\n") for f in line.split("\r") if f.strip()]
    phases = (
        "building world",
        "indexing items (HNSW)",
        "loading feature store",
        "serving requests",
        "flushing the event log",
        "reading the log (DuckDB)",
    )
    for phase in phases:
        mine = [f for f in frames if f.startswith(phase)]
        assert any("ETA" in f for f in mine), (phase, mine)
        assert mine[-1].rstrip().endswith("done") and "100.0%" in mine[-1], (phase, mine)
    # the phases start in this order
    starts = [next(i for i, f in enumerate(frames) if f.startswith(p)) for p in phases]
    assert starts == sorted(starts)


def test_the_listening_socket_sends_responses_without_nagle_delay() -> None:
    """Regression: the host's socket was made with proto 0, so asyncio never set TCP_NODELAY on
    accepted connections and every keep-alive response's body waited ~40 ms (Nagle + delayed
    ACK) behind its headers. The socket is TCP with TCP_NODELAY, and a real host answers a
    keep-alive connection's requests in well under 40 ms each."""
    import http.client
    import statistics

    from _serve_proc import ServeProcess

    from fyp_core.demo import bind

    s = bind("127.0.0.1", 0)
    try:
        assert s.proto == socket.IPPROTO_TCP
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        s.close()
    host = ServeProcess()
    try:
        host.wait_ready()
        conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=10)
        took = []
        for _ in range(30):  # one connection: every request after the first is keep-alive
            t = time.perf_counter()
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            took.append(time.perf_counter() - t)
        conn.close()
    finally:
        host.stop()
    assert statistics.median(took[1:]) < 0.025, f"median {statistics.median(took[1:]):.3f} s"
