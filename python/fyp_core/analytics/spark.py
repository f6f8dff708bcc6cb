"""The Apache Spark engine of ``fyp_core.analytics`` (``connect(root, engine="spark")``).

The same Hive-partitioned Parquet the event log writes is read in place (no copy or conversion);
the same DuckDB-dialect SQL (``queries/``) runs after ``transpile.to_spark``. Each connection is
its own Spark session (``SparkSession.newSession``: shared SparkContext, private temp views and
SQL settings), set to DuckDB's semantics: UTC, and no error on a division by zero.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import pyarrow as pa

from fyp_core.analytics.sqlsource import QUERIES, TABLES, query_body, views
from fyp_core.analytics.transpile import to_spark

__all__ = ["SESSION_CONF", "SparkAnalytics", "spark_session"]

#: settings of every analytics session (DuckDB's semantics; see the module docstring)
SESSION_CONF: Dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.ansi.enabled": "false",
}
#: settings of a local session made by ``spark_session`` (small machines, tests, quick runs)
LOCAL_CONF: Dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.driver.memory": "2g",
}


def spark_session(master: str = "local[2]", conf: Optional[Mapping[str, str]] = None) -> Any:
    """The active SparkSession, or a new one on ``master`` with ``LOCAL_CONF`` + ``conf``."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:  # the optional extra
        raise ImportError(
            "engine='spark' needs pyspark: pip install 'fyp-core[spark]' (and a Java 17 runtime)"
        ) from e
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ValueError(
            "engine='spark' needs a Java 17 runtime: no java on PATH and JAVA_HOME is unset "
            "(Debian: apt-get install -y openjdk-17-jre-headless)"
        )
    b = SparkSession.builder.master(master).appName("fyp_core.analytics")
    for k, v in {**LOCAL_CONF, **(conf or {})}.items():
        b = b.config(k, v)
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


class SparkAnalytics:
    """Analytics over one log directory on Spark: ``run(name, **params)`` returns Arrow.

    Table views are registered at every run (so each query lists the partitions' files afresh,
    as DuckDB's glob does), then the shared views with the run's parameters inlined.
    """

    def __init__(self, root: str, spark: Any = None, **params: Any) -> None:
        if not os.path.isdir(root):
            raise ValueError(f"log directory {root!r} does not exist")
        self.root = os.path.abspath(root)
        self.params: Dict[str, Any] = {k: v for k, v in params.items() if v is not None}
        self.spark = (spark if spark is not None else spark_session()).newSession()
        for k, v in SESSION_CONF.items():
            self.spark.conf.set(k, v)

    def _register(self, tables: tuple) -> None:
        from pyspark.sql import functions as F

        from fyp_core.analytics import table_files

        for t in tables:
            files = table_files(self.root, t)
            if not files:
                raise ValueError(f"no files for table {t!r} under {self.root!r}")
            base = str(Path(self.root) / t)
            df = self.spark.read.option("basePath", base).parquet(base)
            # partition values as DuckDB reads them (hive_types dt VARCHAR, hour INTEGER)
            df = df.withColumn("dt", F.col("dt").cast("string"))
            df = df.withColumn("hour", F.col("hour").cast("int"))
            df.createOrReplaceTempView(t)

    def _prepare(self, tables: tuple, params: Dict[str, Any]) -> None:
        self._register(tables)
        if {"impressions", "engagements"} <= set(tables):
            for view, body in views():
                self.spark.sql(f"CREATE OR REPLACE TEMP VIEW {view} AS {to_spark(body, params)}")

    def sql(self, text: str, **params: Any) -> Any:
        """A Spark DataFrame for one DuckDB-dialect SELECT over the tables that have files and
        the shared views (the same names the queries read)."""
        from fyp_core.analytics import table_files

        p = {**self.params, **{k: v for k, v in params.items() if v is not None}}
        self._prepare(tuple(t for t in TABLES if table_files(self.root, t)), p)
        return self.spark.sql(to_spark(text, p))

    def run(self, name: str, **params: Any) -> pa.Table:
        """Run query ``name`` over the log and return its result as a ``pyarrow.Table``."""
        if name not in QUERIES:
            raise ValueError(f"unknown query {name!r}; known: {', '.join(sorted(QUERIES))}")
        p = {**self.params, **{k: v for k, v in params.items() if v is not None}}
        self._prepare(tuple(t for t in TABLES if t in QUERIES[name]), p)
        return self.spark.sql(to_spark(query_body(name), p)).toArrow()

    def close(self) -> None:
        """Drop this connection's temp views (the shared SparkContext keeps running)."""
        for name in self.spark.catalog.listTables():
            if name.isTemporary:
                self.spark.catalog.dropTempView(name.name)
