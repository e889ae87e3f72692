"""Read-only SQL over the audit database, and its output formats.

Read-only in fact, in three independent layers: (1) DuckDB's own parser classifies the
statement and only one SELECT or EXPLAIN passes (WITH, FROM-first, VALUES, DESCRIBE, SHOW,
SUMMARIZE and table PRAGMAs parse as SELECT); (2) the database is attached READ_ONLY, so
nothing can be written even if a statement slipped through; (3) the connection has
`enable_external_access = false` with `lock_configuration = true`, so no file or URL can be
read or written (`read_csv`, `read_parquet('http://…')`, `COPY … TO`, `ATTACH`, `INSTALL`,
`LOAD`) and the settings cannot be turned back on.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import io
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from spine_pipeline.audit.duck import AuditError, reading

ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
CELL_WIDTH = 60


class SqlRefused(AuditError):
    """The statement is not a single read-only query."""


@dataclass(frozen=True)
class SqlResult:
    columns: list[str]
    arrow: pa.Table

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        return [tuple(r.values()) for r in self.arrow.to_pylist()]


def duckdb_message(exc: duckdb.Error) -> str:
    """DuckDB's own message on one line (no traceback, no caret diagram)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = [lines[0]] if lines else [type(exc).__name__]
    keep += [ln for ln in lines[1:] if ln.startswith("Did you mean")]
    return " ".join(keep)


def check_statement(query: str) -> None:
    """Refuse anything but one SELECT/EXPLAIN, by DuckDB's parser (not by regexes)."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise AuditError(duckdb_message(exc)) from None
    if not statements:
        raise SqlRefused("empty query")
    if len(statements) > 1:
        raise SqlRefused(f"one statement at a time, got {len(statements)}")
    kind = statements[0].type
    if kind not in ALLOWED:
        raise SqlRefused(
            f"refused: {kind.name} statements are not allowed; the audit database is "
            "read-only (SELECT, WITH, EXPLAIN, DESCRIBE, SHOW, SUMMARIZE only)"
        )


def run_sql_result(db_path: str | os.PathLike[str], query: str) -> SqlResult:
    check_statement(query)
    with reading(db_path) as con:
        try:
            cur = con.execute(query)
            if cur.description is None:
                return SqlResult([], pa.table({}))
            table = cur.to_arrow_table()
        except duckdb.PermissionException as exc:
            raise SqlRefused(f"refused: {duckdb_message(exc)}") from None
        except duckdb.Error as exc:
            message = duckdb_message(exc)
            if "read-only mode" in message or "configuration has been locked" in message:
                raise SqlRefused(f"refused: {message}") from None
            raise AuditError(message) from None
    return SqlResult(list(table.column_names), table)


def run_sql(db_path: str | os.PathLike[str], query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(columns, rows) of one read-only query; AuditError (one line) on refusal or bad SQL."""
    result = run_sql_result(db_path, query)
    return result.columns, result.rows


# ----------------------------------------------------------------------------- formats


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | dict):
        return json.dumps(_json_value(value), ensure_ascii=False)
    return str(value)


def format_table(
    columns: list[str],
    rows: list[tuple[Any, ...]],
    width: int = CELL_WIDTH,
    full: tuple[str, ...] = (),
) -> str:
    """Aligned columns; wide cells cut with an ellipsis (except `full` columns, e.g. links
    meant to be clicked); newlines shown as ⏎."""

    def cell(v: Any, keep: bool) -> str:
        s = _text(v).replace("\r\n", "⏎").replace("\n", "⏎").replace("\t", " ")
        return s if keep or len(s) <= width else s[: width - 1] + "…"

    keep = [c in full for c in columns]
    cells = [[cell(v, keep[i]) for i, v in enumerate(r)] for r in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(r[i], int | float | decimal.Decimal) or r[i] is None for r in rows)
        and any(r[i] is not None for r in rows)
        for i in range(len(columns))
    ]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)
        ).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"


def format_csv(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_text(v) for v in r])
    return buf.getvalue()


def format_json(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    docs = [{c: _json_value(v) for c, v in zip(columns, r, strict=True)} for r in rows]
    return json.dumps(docs, ensure_ascii=False, indent=1) + "\n"


def write_parquet(result: SqlResult, path: str | os.PathLike[str]) -> None:
    """The result as a zstd Parquet file (written by pyarrow: the sandbox cannot COPY)."""
    pq.write_table(result.arrow, Path(path), compression="zstd")
