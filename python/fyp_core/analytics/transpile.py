"""DuckDB SQL -> Spark SQL for the analytics queries (one source per query, see ``sqlsource``).

The queries are written once in DuckDB's dialect; ``sqlglot`` translates them at run time and this
module adds what keeps the results equal on both engines: query parameters become literals (the
DuckDB files read them with ``getvariable``), ``epoch_us`` becomes ``unix_micros``,
``quantile_cont`` the exact ``percentile`` (same linear interpolation), decimal literals become
DOUBLE (DuckDB mixes them with doubles as doubles; Spark would keep ``avg(1.0)`` a rounded DECIMAL)
the DuckDB-only CTE hint ``MATERIALIZED`` is dropped and a window call inside arithmetic is
parenthesised.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import sqlglot
from sqlglot import exp

__all__ = ["literal", "to_spark"]


def literal(name: str, value: Any) -> exp.Expression:
    """A SQL literal for one query parameter (``None`` is NULL, as an unset DuckDB variable)."""
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int):
        return exp.Literal.number(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"parameter {name} must be finite, got {value}")
        return exp.Cast(this=exp.Literal.number(repr(value)), to=exp.DataType.build("DOUBLE"))
    if isinstance(value, str):
        return exp.Literal.string(value)
    raise ValueError(
        f"parameter {name} must be a number, a string or None, got {type(value).__name__}"
    )


def _rewrite(node: exp.Expression, params: Mapping[str, Any]) -> exp.Expression:
    if isinstance(node, exp.Anonymous):
        fname = str(node.this).lower()
        if fname == "getvariable":
            arg = node.expressions[0] if node.expressions else None
            if not isinstance(arg, exp.Literal) or not arg.is_string:
                raise ValueError(f"getvariable needs a string literal: {node.sql()}")
            return literal(arg.this, params.get(arg.this))
        if fname == "epoch_us":
            return exp.Anonymous(this="unix_micros", expressions=list(node.expressions))
    if isinstance(node, exp.PercentileCont) and node.args.get("expression") is not None:
        return exp.Anonymous(this="percentile", expressions=[node.this, node.expression])
    if isinstance(node, exp.Literal) and node.is_number and any(c in node.this for c in ".eE"):
        if not isinstance(node.parent, exp.Cast):
            return exp.Cast(this=node.copy(), to=exp.DataType.build("DOUBLE"))
    if isinstance(node, exp.Window) and isinstance(node.parent, exp.Binary):
        # Spark reads `OVER w - x` as the identifier `w-x`; parenthesise the window call
        return exp.Paren(this=node.copy())
    if isinstance(node, exp.CTE) and node.args.get("materialized") is not None:
        node.set("materialized", None)
    return node


def to_spark(sql: str, params: Mapping[str, Any] | None = None) -> str:
    """Translate one DuckDB SELECT statement to Spark SQL with ``params`` inlined as literals."""
    statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    if len(statements) != 1:
        raise ValueError(f"sql must hold exactly one statement, got {len(statements)}")
    tree = statements[0].transform(lambda n: _rewrite(n, params or {}))
    return tree.sql(dialect="spark")
