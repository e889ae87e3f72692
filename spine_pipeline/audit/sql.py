"""Read-only SQL over the audit database, bounded, and its output formats.

Read-only in fact, in independent layers:

1. DuckDB's own parser decides what the statement is, by its parsed tree, not by regexes
   or the top statement type alone: one statement; a query (SELECT, WITH, VALUES, set
   operations, DESCRIBE, SHOW, SUMMARIZE: those `json_serialize_sql` serializes) or an
   EXPLAIN [ANALYZE] of one. `EXPLAIN ANALYZE` runs what it explains, so EXPLAIN of
   anything else (a COPY, a CREATE) is refused like the statement itself. Table functions
   come from an allow-list: DuckDB lets a sandboxed reader still read the attached file
   itself (`read_blob`), and `query()` would run SQL the check never saw.
2. The reader instance (`duck.py`) holds the database READ_ONLY, its own in-memory catalog
   detached, no temporary directory, no file or URL access (`read_csv`, `COPY ... TO`,
   `ATTACH` of a file, `INSTALL`, `LOAD`, Python data frames), the configuration locked.

Bounded: a time limit (a timer interrupts the query, `DEFAULT_TIMEOUT_SECONDS`), DuckDB's
memory limit without spilling (`SPINE_AUDIT_MEMORY_LIMIT`), and results streamed in Arrow
batches, so a file of any size is written in bounded memory and stdout is capped by rows.

Output never carries a raw control character: tables and error text show them visibly
(`visible`), JSON escapes them (losslessly). CSV and Parquet are data, written as they are.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import json
import os
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from spine_pipeline.audit.duck import AuditError, reading

DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_MAX_ROWS = 100_000  # rows printed to stdout; files take any size
BATCH_ROWS = 10_000  # rows per Arrow batch read from DuckDB
PARQUET_ROW_GROUP = 128 * 1024
CELL_WIDTH = 60

#: Table functions a query may call: generators, unnesting and DuckDB's catalog views. Every
#: other one (`read_*`, `parquet_*`, `glob`, `query`, `json_execute_serialized_sql`,
#: `enable_logging`, `checkpoint`, ...) is refused, including any a later DuckDB adds.
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "generate_series",
        "unnest",
        "repeat",
        "repeat_row",
        "json_each",
        "json_tree",
        "duckdb_columns",
        "duckdb_constraints",
        "duckdb_databases",
        "duckdb_dependencies",
        "duckdb_functions",
        "duckdb_indexes",
        "duckdb_keywords",
        "duckdb_schemas",
        "duckdb_sequences",
        "duckdb_settings",
        "duckdb_tables",
        "duckdb_types",
        "duckdb_views",
        "pragma_table_info",
        "pragma_show",
        "pragma_version",
        "pragma_database_size",
        "pg_timezone_names",
        "icu_calendar_names",
    }
)
#: A table name with these is a file path to DuckDB's replacement scans, never an audit table.
_FILE_NAME_CHARS = frozenset("./\\:")
_QUERIES = "a query (SELECT, WITH, VALUES, DESCRIBE, SHOW, SUMMARIZE) or EXPLAIN of one"


class SqlRefused(AuditError):
    """The statement is not a single read-only query."""


class SqlTimeout(AuditError):
    """The query ran past its time limit and was interrupted."""


class SqlError(AuditError):
    """DuckDB's own error, all its lines: message, candidates, the caret under the query."""


# ----------------------------------------------------------------------------- visible text

_INVISIBLE = (
    *range(0x20),
    0x7F,
    *range(0x80, 0xA0),  # C1 controls (0x9B is a one-byte CSI on some terminals)
    0x061C,
    0x200E,
    0x200F,
    *range(0x202A, 0x202F),  # bidi embeddings and overrides
    *range(0x2066, 0x206A),  # bidi isolates
    0x2028,
    0x2029,
)


def _picture(code: int) -> str:
    """C0 as its Unicode control picture (one column, so tables stay aligned), others escaped."""
    if code < 0x20:
        return chr(0x2400 + code)
    if code == 0x7F:
        return "\u2421"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_VISIBLE = {code: _picture(code) for code in _INVISIBLE}
_VISIBLE_LINES = {code: p for code, p in _VISIBLE.items() if code not in (0x09, 0x0A)}
_JSON_ESCAPES = {code: f"\\u{code:04x}" for code in _INVISIBLE if code >= 0x7F}


def visible(text: str, *, lines: bool = False) -> str:
    """`text` safe for a terminal: every control, bidi or line-separator character shown as
    a visible stand-in, never raw (an escape sequence in archived content must not clear
    the screen, retitle the window or reorder what the auditor reads). `lines=True` keeps
    newlines and tabs (error text)."""
    return text.translate(_VISIBLE_LINES if lines else _VISIBLE)


# ----------------------------------------------------------------------------- errors


def duckdb_message(exc: BaseException) -> str:
    """DuckDB's own message on one line (no traceback, no caret diagram), shown visibly."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = [lines[0]] if lines else [type(exc).__name__]
    keep += [ln for ln in lines[1:] if ln.startswith("Did you mean")]
    return visible(" ".join(keep))


def duckdb_error_text(exc: BaseException) -> str:
    """DuckDB's whole error text (its hints and caret are the useful part), shown visibly."""
    text = "\n".join(ln.rstrip() for ln in str(exc).strip().splitlines())
    return visible(re.sub(r"\n{3,}", "\n\n", text), lines=True) or type(exc).__name__


def _refused(message: str) -> SqlRefused:
    return SqlRefused(visible(f"refused: {message}"))


# ----------------------------------------------------------------------------- the check

_PARSER_LOCK = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _serialized(text: str) -> dict[str, Any]:
    """DuckDB's parsed tree of `text` as JSON (`error` set for anything but SELECT).

    Parsed on a private, empty, locked instance: json_serialize_sql only parses.
    """
    global _parser
    with _PARSER_LOCK:
        if _parser is None:
            con = duckdb.connect(":memory:")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            _parser = con
        row = _parser.execute("SELECT json_serialize_sql(?)", [text]).fetchone()
    try:
        doc = json.loads(row[0]) if row else {"error": True}
    except RecursionError:
        raise _refused("the query is nested too deeply") from None
    return doc if isinstance(doc, dict) else {"error": True}


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    """Every object in a parsed tree (iterative: a deep tree must not exhaust the stack)."""
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _query_tree(text: str) -> list[Any] | None:
    """The statements of `text` if it is exactly one query DuckDB serializes, else None."""
    doc = _serialized(text)
    statements = doc.get("statements")
    if doc.get("error") or not isinstance(statements, list) or len(statements) != 1:
        return None
    return statements


def _check_tree(statements: list[Any]) -> None:
    """Refuse table functions off the allow-list and file names used as tables."""
    for node in _nodes(statements):
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            function = node.get("function")
            name = function.get("function_name") if isinstance(function, dict) else None
            if not isinstance(name, str) or name.lower() not in ALLOWED_TABLE_FUNCTIONS:
                raise _refused(
                    f"table function {name}() is not allowed; the audit SQL reads the audit "
                    "database only"
                )
        elif kind == "BASE_TABLE":
            name = str(node.get("table_name", ""))
            if _FILE_NAME_CHARS & set(name):
                raise _refused(
                    f"{name!r} names a file; the audit SQL reads the audit database only"
                )


_WORD = re.compile(r"[A-Za-z_]+")


def _explained(query: str) -> list[str]:
    """Candidate texts of the statement an EXPLAIN explains, by DuckDB's tokens.

    `EXPLAIN [ANALYZE|ANALYSE] stmt` or `EXPLAIN (options) stmt`; `EXPLAIN (SELECT ...)` is
    the parenthesized query itself, so with a parenthesis both readings are candidates (a
    parenthesized text that is a query is never also options followed by a statement).
    Anything else yields text that is not one query, and is refused.
    """
    tokens = duckdb.tokenize(query)

    def word(i: int) -> str:
        match = _WORD.match(query, tokens[i][0]) if i < len(tokens) else None
        return match[0].lower() if match else ""

    def rest(i: int) -> str:
        return query[tokens[i][0] :] if i < len(tokens) else ""

    if word(0) != "explain" or len(tokens) < 2:
        return []
    if word(1) in ("analyze", "analyse"):
        return [rest(2)]
    if query[tokens[1][0]] != "(":
        return [rest(1)]
    depth = 0
    for i in range(1, len(tokens)):
        pos, kind = tokens[i]
        if kind == duckdb.token_type.operator and query[pos] in "()":
            depth += 1 if query[pos] == "(" else -1
            if depth == 0:
                return [rest(1), rest(i + 1)]
    return [rest(1)]


def check_statement(query: str) -> None:
    """Refuse anything but one query or EXPLAIN of one, by DuckDB's parsed tree."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise SqlError(duckdb_error_text(exc)) from None
    if not statements:
        raise SqlRefused("empty query")
    if len(statements) > 1:
        raise _refused(f"one statement at a time, got {len(statements)}")
    kind = statements[0].type
    if kind == duckdb.StatementType.SELECT:
        tree = _query_tree(query)
    elif kind == duckdb.StatementType.EXPLAIN:
        trees = (_query_tree(text) for text in _explained(query) if text.strip())
        tree = next((t for t in trees if t is not None), None)
    else:
        raise _refused(
            f"{kind.name} statements are not allowed; the audit database is read-only "
            f"({_QUERIES} only)"
        )
    if tree is None:
        raise _refused(f"only {_QUERIES} is allowed")
    _check_tree(tree)


# ----------------------------------------------------------------------------- running


def _interrupt(con: duckdb.DuckDBPyConnection, fired: threading.Event) -> None:
    fired.set()
    con.interrupt()


class _Watchdog:
    """Interrupts the connection's query when its time is up (DuckDB checks between
    vectors, so even a cross join with no output stops promptly).

    The timer holds the connection and an event, never the watchdog: no reference cycle,
    so the cursor is released (and its snapshot may close) as soon as the query is done.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, seconds: float | None) -> None:
        self.seconds = seconds
        self._fired = threading.Event()
        self._timer = (
            threading.Timer(seconds, _interrupt, args=(con, self._fired)) if seconds else None
        )

    @property
    def fired(self) -> bool:
        return self._fired.is_set()

    def __enter__(self) -> _Watchdog:
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            # Cancelled, the timer's thread still holds the connection until it wakes and
            # ends; joining it (it wakes at once) releases the cursor before we return.
            self._timer.cancel()
            self._timer.join(timeout=5.0)
            self._timer = None

    def error(self, exc: BaseException) -> AuditError:
        """The expected error for what DuckDB (or Arrow, mid-stream) raised."""
        if self.fired:
            return SqlTimeout(f"query timed out after {self.seconds:g} s")
        if isinstance(exc, duckdb.PermissionException):
            return _refused(duckdb_message(exc))
        message = duckdb_message(exc)
        if "read-only mode" in message or "configuration has been locked" in message:
            return _refused(message)
        return SqlError(duckdb_error_text(exc))


@dataclass
class SqlStream:
    """A running query's result: its schema now, its rows batch by batch."""

    schema: pa.Schema
    _reader: pa.RecordBatchReader | None
    _watchdog: _Watchdog

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def batches(self) -> Iterator[pa.RecordBatch]:
        if self._reader is None:
            return
        while True:
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                return
            except (duckdb.Error, pa.ArrowException, OSError) as exc:
                raise self._watchdog.error(exc) from None
            yield batch


@contextmanager
def stream_sql(
    db_path: str | os.PathLike[str],
    query: str,
    *,
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[SqlStream]:
    """Run one read-only query; its rows are read inside the `with`, within `timeout`
    seconds in all (None: no limit). AuditError subclasses for refusal, timeout, bad SQL."""
    check_statement(query)
    with reading(db_path) as con, _Watchdog(con, timeout) as watchdog:
        try:
            con.execute(query)
            reader = con.to_arrow_reader(batch_rows) if con.description is not None else None
        except duckdb.Error as exc:
            raise watchdog.error(exc) from None
        yield SqlStream(reader.schema if reader else pa.schema([]), reader, watchdog)


def _batch_rows(batch: pa.RecordBatch) -> list[tuple[Any, ...]]:
    """Rows as tuples, column by column (duplicate column names stay distinct)."""
    return list(zip(*(column.to_pylist() for column in batch.columns), strict=True))


@dataclass
class Written:
    rows: int = 0
    capped: bool = False  # more rows existed than were written


def _row_chunks(
    stream: SqlStream, max_rows: int | None, written: Written
) -> Iterator[list[tuple[Any, ...]]]:
    for batch in stream.batches():
        rows = _batch_rows(batch)
        if max_rows is not None and written.rows + len(rows) > max_rows:
            rows = rows[: max_rows - written.rows]
            written.capped = True
        written.rows += len(rows)
        if rows:
            yield rows
        if written.capped:
            return


def collect(
    stream: SqlStream, max_rows: int | None = None
) -> tuple[list[tuple[Any, ...]], Written]:
    written = Written()
    rows = [r for chunk in _row_chunks(stream, max_rows, written) for r in chunk]
    return rows, written


def run_sql(
    db_path: str | os.PathLike[str],
    query: str,
    *,
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    max_rows: int | None = None,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(columns, rows) of one read-only query; AuditError on refusal, timeout or bad SQL."""
    with stream_sql(db_path, query, timeout=timeout) as stream:
        rows, _ = collect(stream, max_rows)
        return stream.columns, rows


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
    meant to be clicked); newlines shown as ⏎, other control characters visibly."""

    def cell(v: Any, keep: bool) -> str:
        s = _text(v).replace("\r\n", "⏎").replace("\n", "⏎").replace("\t", " ")
        s = visible(s)
        return s if keep or len(s) <= width else s[: width - 1] + "…"

    keep = [c in full for c in columns]
    cells = [[cell(v, keep[i]) for i, v in enumerate(r)] for r in rows]
    names = [visible(c) for c in columns]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(names)]
    numeric = [
        all(isinstance(r[i], int | float | decimal.Decimal) or r[i] is None for r in rows)
        and any(r[i] is not None for r in rows)
        for i in range(len(columns))
    ]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)
        ).rstrip()

    out = [line(names), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"


class TextSink(Protocol):
    """Where a text writer goes: a file, or stdout through click."""

    def write(self, text: str, /) -> int: ...


def write_csv(stream: SqlStream, out: TextSink, max_rows: int | None = None) -> Written:
    written = Written()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(stream.columns)
    for rows in _row_chunks(stream, max_rows, written):
        writer.writerows([_text(v) for v in r] for r in rows)
    return written


def _json_line(doc: dict[str, Any]) -> str:
    """One JSON object; DEL, C1 and bidi characters escaped too (json escapes C0 itself)."""
    return json.dumps(doc, ensure_ascii=False).translate(_JSON_ESCAPES)


def write_json(stream: SqlStream, out: TextSink, max_rows: int | None = None) -> Written:
    """One JSON array, one row object per line, written as the rows arrive."""
    written = Written()
    columns = stream.columns
    out.write("[")
    separator = "\n"
    for rows in _row_chunks(stream, max_rows, written):
        parts = []
        for r in rows:
            doc = {c: _json_value(v) for c, v in zip(columns, r, strict=True)}
            parts.append(separator + _json_line(doc))
            separator = ",\n"
        out.write("".join(parts))
    out.write("\n]\n" if written.rows else "]\n")
    return written


def write_parquet(stream: SqlStream, out: BinaryIO) -> Written:
    """The result as a zstd Parquet file (written by pyarrow: the sandbox cannot COPY),
    in row groups of PARQUET_ROW_GROUP rows, so memory stays bounded."""
    written = Written()
    pending: list[pa.RecordBatch] = []
    with pq.ParquetWriter(out, stream.schema, compression="zstd") as writer:
        for batch in stream.batches():
            pending.append(batch)
            written.rows += batch.num_rows
            if sum(b.num_rows for b in pending) >= PARQUET_ROW_GROUP:
                writer.write_table(pa.Table.from_batches(pending, stream.schema))
                pending = []
        if pending:
            writer.write_table(pa.Table.from_batches(pending, stream.schema))
    return written
