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


def test_sigint_interrupts_a_detached_call():
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        sent = time.perf_counter()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
        took = time.perf_counter() - sent
    finally:
        p.kill()
    assert p.returncode == 0, (out, err)
    assert out.startswith("interrupted"), out
    assert took < 3.0, f"the call ran {took:.1f} s past Ctrl-C"


def test_an_uninterrupted_call_returns_normally():
    from fyp_core import _core

    t = time.perf_counter()
    _core._wait_interruptible(0.05)
    assert time.perf_counter() - t >= 0.05
    with pytest.raises(ValueError, match="seconds must be in"):
        _core._wait_interruptible(-1.0)
