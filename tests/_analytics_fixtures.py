"""Shared simulated logs for the analytics/OPE/report tests (generated once per test process)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile

from fyp_core.analytics.synthetic import SimTruth, generate_log


@functools.cache
def sim_log(**kw: object) -> SimTruth:
    """A simulated log directory (cached per keyword set) and its ground truth."""
    root = tempfile.mkdtemp(prefix="fyp-sim-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    params = dict(n_requests=16_000, n_users=1_500, n_items=12_000, days=10, seed=7)
    params.update(kw)
    return generate_log(root, **params)  # type: ignore[arg-type]
