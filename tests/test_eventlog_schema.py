"""The event log's tables are declared once, in the Rust core: ``fyp_core.eventlog.schema`` hands
that declaration to Python, the analytics simulator writes with it, and docs/eventlog_schema.md
describes exactly those columns and types (checked here, so the prose cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from fyp_core import eventlog
from fyp_core.analytics import synthetic
from fyp_core.synth import TASKS

DOC = Path(__file__).resolve().parents[1] / "docs" / "eventlog_schema.md"
DOC_TYPES = {
    "string": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "uint64": pa.uint64(),
    "int32": pa.int32(),
    "float64": pa.float64(),
    "float32": pa.float32(),
    "bool": pa.bool_(),
    "list<uint64>": pa.list_(pa.uint64()),
    "list<float32>": pa.list_(pa.float32()),
    "list<string>": pa.list_(pa.string()),
}
_COLUMN = re.compile(r"([\w<>]+): (list<\w+>|\w+)")


def doc_columns(table: str) -> list[tuple[str, str]]:
    """The ``name: type`` pairs of the doc's section for ``table`` (parenthesised notes removed)."""
    text = DOC.read_text()
    m = re.search(rf"^### {table} —.*?$(.*?)(?=^##)", text, re.S | re.M)
    assert m, f"docs/eventlog_schema.md has no section for {table}"
    body = m.group(1)
    while True:
        stripped = re.sub(r"\([^()]*\)", "", body)
        if stripped == body:
            break
        body = stripped
    return [(n, t) for n, t in _COLUMN.findall(body) if t in DOC_TYPES]


@pytest.mark.parametrize("table", eventlog.TABLES)
def test_docs_describe_the_declared_columns(table):
    sch = eventlog.schema(table)
    doc: list[tuple[str, pa.DataType]] = []
    for name, typ in doc_columns(table):
        names = [f"pred_{t}" for t in eventlog.DEFAULT_TASKS] if name == "pred_<task>" else [name]
        doc.extend((n, DOC_TYPES[typ]) for n in names)
    assert [n for n, _ in doc] == sch.names
    for (name, typ), field in zip(doc, sch):
        assert field.type == typ, (table, name, field.type, typ)
        assert not field.nullable, (table, name)


def test_schema_follows_the_task_set_and_refuses_unknown_tables():
    sc = eventlog.schema("ranker_scores", ["a", "b"])
    assert [n for n in sc.names if n.startswith("pred_")] == ["pred_a", "pred_b"]
    assert eventlog.schema("ranker_scores", ("a", "b")) is sc  # cached
    with pytest.raises(ValueError, match='unknown event-log table "clicks".*impressions'):
        eventlog.schema("clicks")
    with pytest.raises(TypeError, match="sequence of task names"):
        eventlog.schema("ranker_scores", "finish")
    assert eventlog.SCHEMA_VERSION == "2"
    assert "feature_events" in eventlog.TABLES


def test_simulators_share_one_task_list_and_the_writers_schemas():
    assert synthetic.TASKS == TASKS
    for table, sch in synthetic.SCHEMAS.items():
        assert sch.equals(eventlog.schema(table, TASKS)), table
