"""Ctrl-C stops a long call that runs with the GIL released (``training_set``'s replay, through the
binding's ``run_interruptible``): a real process, a real SIGINT, KeyboardInterrupt within a
fraction of a second instead of after the call."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

CHILD = r"""
import sys, time
from fyp_core import _core
print("ready", flush=True)
t = time.perf_counter()
try:
    _core._wait_interruptible(30.0)
except KeyboardInterrupt as e:
    print(f"interrupted {time.perf_counter() - t:.3f} {e}", flush=True)
    sys.exit(0)
print("not interrupted", flush=True)
sys.exit(1)
"""


def _sigint_child(src: str, after: float, timeout: float) -> tuple[str, str, int, float]:
    """Run ``src`` in a fresh interpreter, send SIGINT ``after`` seconds past its "ready" line;
    returns its stdout, stderr, exit code and the seconds it ran past the signal."""
    p = subprocess.Popen(
        [sys.executable, "-c", src], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
        time.sleep(after)
        sent = time.perf_counter()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=timeout)
        took = time.perf_counter() - sent
    finally:
        p.kill()
    return out, err, p.returncode, took


def test_sigint_interrupts_a_detached_call():
    out, err, rc, took = _sigint_child(CHILD, 0.3, 20)
    assert rc == 0, (out, err)
    assert out.startswith("interrupted"), out
    assert took < 3.0, f"the call ran {took:.1f} s past Ctrl-C"


def test_an_uninterrupted_call_returns_normally():
    from fyp_core import _core

    t = time.perf_counter()
    _core._wait_interruptible(0.05)
    assert time.perf_counter() - t >= 0.05
    with pytest.raises(ValueError, match="seconds must be in"):
        _core._wait_interruptible(-1.0)


ADD_CHILD = r"""
import sys, time
import numpy as np
import fyp_core
n, dim = 200_000, 32
rng = np.random.default_rng(0)
data = rng.standard_normal((n, dim)).astype(np.float32)
ix = fyp_core.HnswIndex(dim, m=16, ef_construction=200, capacity=n)
print("ready", flush=True)
t = time.perf_counter()
try:
    ix.add(np.arange(n), data, threads=1)
except KeyboardInterrupt:
    took = time.perf_counter() - t
    have = len(ix)
    # the rows inserted before the interrupt are whole: each is found from its own vector
    probe = np.arange(0, have, max(1, have // 50))
    ids, _ = ix.search(data[probe], 1, ef=64)
    found = float((ids[:, 0] == probe).mean())
    print(f"interrupted {took:.3f} {have} {found:.3f}", flush=True)
    sys.exit(0)
print("not interrupted", flush=True)
sys.exit(1)
"""


def test_sigint_interrupts_a_bulk_hnsw_add_and_keeps_what_was_inserted():
    out, err, rc, took = _sigint_child(ADD_CHILD, 1.0, 60)
    assert rc == 0, (out, err)
    word, _, have, found = out.split()
    assert word == "interrupted", out
    assert 0 < int(have) < 200_000, out
    assert float(found) >= 0.95, out
    assert took < 5.0, f"the add ran {took:.1f} s past Ctrl-C"
