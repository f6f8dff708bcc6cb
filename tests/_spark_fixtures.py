"""Shared Spark set-up for the Spark tests: one local session per test process, skipped loudly
(with the reason in the summary) when pyspark or a Java runtime is missing."""

from __future__ import annotations

import functools
import math
import shutil
from typing import Any, List

import pytest


def require_spark() -> None:
    """Skip the calling test module when Spark cannot run here."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        pytest.skip(
            "pyspark is not installed: pip install 'fyp-core[spark]'", allow_module_level=True
        )
    if shutil.which("java") is None:
        pytest.skip(
            "no java on PATH: apt-get install -y openjdk-17-jre-headless", allow_module_level=True
        )


@functools.cache
def session() -> Any:
    """One local[2] SparkSession for the whole test process (the JVM is the expensive part)."""
    from fyp_core.analytics.spark import spark_session

    return spark_session("local[2]")


def assert_rows_close(got: List[dict], want: List[dict], what: str, rel: float = 1e-9) -> None:
    """Row lists equal: same length, columns and values; floats to ``rel`` (abs 1e-12)."""
    assert len(got) == len(want), f"{what}: {len(got)} rows vs {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert list(g) == list(w), f"{what}: columns {list(g)} vs {list(w)}"
        for k in g:
            a, b = g[k], w[k]
            if isinstance(a, float) and isinstance(b, float):
                ok = math.isclose(a, b, rel_tol=rel, abs_tol=1e-12) or (a != a and b != b)
            else:
                ok = a == b
            assert ok, f"{what} row {i} column {k}: {a!r} vs {b!r}"
