"""The event log's on-disk contract as pyarrow objects, from the one declaration in the Rust core.

Every table the log writes is declared once (``rust/core/src/eventlog/tables.rs``); the writer,
its write-ahead file and these schemas are generated from that declaration, so a simulator or a
reader that builds its tables with :func:`schema` writes exactly what ``EventLog`` writes.

>>> from fyp_core import eventlog
>>> eventlog.schema("engagements").names[:3]
['impression_id', 'ts', 'user_token']
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import pyarrow as pa

from fyp_core._core import (
    EVENTLOG_DEFAULT_TASKS,
    EVENTLOG_SCHEMA_VERSION,
    EVENTLOG_TABLES,
    _eventlog_schema_ipc,
    impression_ids,
    impression_keys,
)

__all__ = [
    "DEFAULT_TASKS",
    "SCHEMA_VERSION",
    "TABLES",
    "impression_ids",
    "impression_keys",
    "schema",
]

#: Every table the log writes, in the core's order.
TABLES: tuple[str, ...] = tuple(EVENTLOG_TABLES)
#: The default ranker task set: one ``pred_<task>`` column per task in ``ranker_scores``.
DEFAULT_TASKS: tuple[str, ...] = tuple(EVENTLOG_DEFAULT_TASKS)
#: Written into every file as key-value metadata ``fyp.schema_version``.
SCHEMA_VERSION: str = EVENTLOG_SCHEMA_VERSION


def schema(table: str, tasks: Sequence[str] = DEFAULT_TASKS) -> pa.Schema:
    """The Arrow schema of one log table (columns in file order, none nullable).

    ``tasks`` names the ``pred_<task>`` columns of ``ranker_scores`` (the ranker's task set);
    other tables ignore it. An unknown table raises ``ValueError`` listing the tables.
    """
    if isinstance(tasks, str):
        raise TypeError("tasks must be a sequence of task names, not one string")
    return _schema(table, tuple(tasks))


@lru_cache(maxsize=64)
def _schema(table: str, tasks: tuple[str, ...]) -> pa.Schema:
    with pa.ipc.open_stream(pa.py_buffer(_eventlog_schema_ipc(table, list(tasks)))) as r:
        return r.schema
