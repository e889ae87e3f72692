"""Explicit Arrow schemas of the archive tables: the contract Parquet readers rely on.

Every table has the columns docs/contracts.md 4.4 fixes, plus extras that make the archive lossless
(`raw_json`, `raw_bytes`) or easier to audit (`ordinal`, counts). Column descriptions live in
field metadata so `docs/archive-format.md` is generated from (and tested against) this module.
`dt` is not a column: it is the Hive partition in the path.

Schema policy: `SCHEMA_VERSION` changes only additively (new nullable columns, new tables);
a column is never renamed, retyped or removed.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "parquet_metadata",
    "render_tables_markdown",
    "schema_for",
]

SCHEMA_VERSION = "1"
META_SCHEMA_VERSION = "spine_pipeline.schema_version"
META_TABLE = "spine_pipeline.table"

_TS = pa.timestamp("us", tz="UTC")
_STR = pa.string()
_BIG = pa.large_string()
_BIN = pa.large_binary()
_I64 = pa.int64()
_BOOL = pa.bool_()
# "element" is the Parquet-compliant list item name, so schemas survive a Parquet round trip.
_STR_LIST = pa.list_(pa.field("element", pa.string()))


def _f(name: str, type_: pa.DataType, description: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"description": description})


def _run_id() -> pa.Field:
    return _f("run_id", _STR, "Spine run id (the id the run was fetched by).", nullable=False)


def _raw_bytes(what: str) -> pa.Field:
    return _f(
        "raw_bytes",
        _BIN,
        f"Exact original bytes of {what}, with the same redactions as raw_json; null unless the "
        "response was not valid UTF-8 there (raw_json then has U+FFFD per invalid byte).",
    )


def _load_cols() -> list[pa.Field]:
    return [
        _f("batch_id", _STR, "Archive batch (load id) that wrote this row.", nullable=False),
        _f("archived_at", _TS, "When that batch was archived (load time, UTC).", nullable=False),
    ]


_RUNS = [
    _run_id(),
    _f("canvas_id", _STR, "Canvas id: from the run, else from the DAG, else from the task tree."),
    _f("canvas_name", _STR, "Canvas name from the DAG."),
    _f("canvas_url", _STR, "https://app.getspine.ai/canvas/{canvas_id}; null without a canvas."),
    _f("status", _STR, "Run status as received (free text: unknown statuses kept as-is)."),
    _f("prompt", _BIG, "Echoed prompt, if the API returned it."),
    _f("template", _STR, "Echoed requested template, if the API returned it."),
    _f("template_used", _STR, "metadata.template_used (null if absent or not a string)."),
    _f("models_used", _STR_LIST, "metadata.models_used; null if not a list, non-strings -> null."),
    _f("credits_consumed", _I64, "metadata.credits_consumed; null if absent or not an integer."),
    _f("duration_ms", _I64, "duration_ms; null if absent or not an integer."),
    _f("final_output", _BIG, "result.final_output, byte-exact (top-level final_output accepted)."),
    _f("error_count", _I64, "Rows of this run in run_errors.", nullable=False),
    _f("block_count", _I64, "DAG nodes = rows of this run in blocks.", nullable=False),
    _f("artifact_count", _I64, "Rows of this run in artifacts.", nullable=False),
    _f("request_name", _STR, "Catalog request that submitted the run; null if unknown."),
    _f("submitted_at", _TS, "When the run was submitted, if known (UTC)."),
    _f(
        "terminal_at",
        _TS,
        "When the run was first seen terminal (UTC); decides dt=.",
        nullable=False,
    ),
    _f("archived_at", _TS, "When the batch was archived (load time, UTC).", nullable=False),
    _f("batch_id", _STR, "Archive batch (load id) that wrote this row.", nullable=False),
    _f(
        "raw_json",
        _BIG,
        "The run's GET /v1/run data text exactly as received, minus every `download_url` member.",
        nullable=False,
    ),
    _f("edge_count", _I64, "Rows of this run in edges.", nullable=False),
    _f("task_count", _I64, "Rows of this run in tasks.", nullable=False),
    _f("agent_instructions", _BIG, "Echoed agent_instructions, if returned."),
    _f("blocks_json", _BIG, "Exact JSON text of the echoed `blocks` value, if returned."),
    _f("progress_json", _BIG, "Exact JSON text of `progress`, if present."),
    _f(
        "fetch_errors",
        _STR_LIST,
        "Problems met while fetching or flattening (e.g. 'dag: canvas not found').",
        nullable=False,
    ),
    _raw_bytes("the run document"),
    _f(
        "dag_raw_json",
        _BIG,
        "DAG data text minus the flattened `nodes`/`edges` arrays (canvas-level fields); "
        "the whole text if it was not valid JSON; null without a DAG.",
    ),
    _f("dag_raw_bytes", _BIN, "Like raw_bytes, for dag_raw_json."),
    _f(
        "tasks_raw_json",
        _BIG,
        "Task-tree data text minus the flattened `completed`/`not_completed` arrays; "
        "null without a task tree.",
    ),
    _f("tasks_raw_bytes", _BIN, "Like raw_bytes, for tasks_raw_json."),
]

_BLOCKS = [
    _run_id(),
    _f("canvas_id", _STR, "Canvas id of the run (see runs.canvas_id)."),
    _f("block_id", _STR, "Node `id`; may repeat in hostile input (rows differ by ordinal)."),
    _f("name", _STR, "Node name, exactly as received."),
    _f("type", _STR, "Block type (free text)."),
    _f("status", _STR, "Block status (free text)."),
    _f("content", _BIG, "Full text output, byte-exact; null if absent, null or not a string."),
    _f(
        "url",
        _STR,
        "External url as received for web-block/yt-block; for every other block (artifact "
        "urls are pre-signed) the url without query string, fragment and userinfo.",
    ),
    _f("sources_json", _BIG, "Exact JSON text of the node's `sources` value; null if absent."),
    _f(
        "sources_count",
        _I64,
        "len(sources) for a list; 0 if absent or null; 1 for any other value.",
        nullable=False,
    ),
    _f("content_sha256", _STR, "sha256 hex of content's UTF-8 bytes; null if content is null."),
    _f("ordinal", _I64, "Position of the node in the DAG `nodes` array (0-based).", nullable=False),
    _f("content_bytes", _I64, "Length of content in UTF-8 bytes; null if content is null."),
    _f(
        "url_redacted",
        _BOOL,
        "True if `url` differs from the received url (query/fragment/userinfo stripped).",
        nullable=False,
    ),
    _f(
        "raw_json",
        _BIG,
        "The node's exact JSON text; string `url` members of non-external blocks and "
        "`download_url` members removed.",
        nullable=False,
    ),
    _raw_bytes("the node"),
]

_BLOCK_SOURCES = [
    _run_id(),
    _f("block_id", _STR, "Node id the source belongs to."),
    _f("idx", _I64, "Position in the node's `sources` array (0 for a non-list value).", False),
    _f("url", _STR, "url/link/href/uri/source_url of an object, or a URL-looking string."),
    _f("title", _STR, "title/name of an object element."),
    _f("raw_json", _BIG, "The element's exact JSON text (`null` for a null element).", False),
    _f("block_ordinal", _I64, "blocks.ordinal of the node (disambiguates duplicate ids).", False),
    _f("canvas_id", _STR, "Canvas id of the run."),
    _raw_bytes("the element"),
]

_EDGES = [
    _run_id(),
    _f("canvas_id", _STR, "Canvas id of the run."),
    _f("source_id", _STR, "Edge source node id (the target depends on / derives from it)."),
    _f("target_id", _STR, "Edge target node id."),
    _f("ordinal", _I64, "Position in the DAG `edges` array.", nullable=False),
    _f("raw_json", _BIG, "The edge's exact JSON text.", nullable=False),
    _raw_bytes("the edge"),
]

_TASKS = [
    _run_id(),
    _f("canvas_id", _STR, "Canvas id of the run."),
    _f("task_id", _STR, "Task id as received (may be null or repeat in hostile input)."),
    _f("parent_task_id", _STR, "task_id of the parent; null for roots."),
    _f("root_task_id", _STR, "task_id of the root of this task's tree."),
    _f("depth", _I64, "0 for roots, parent depth + 1 below.", nullable=False),
    _f("name", _STR, "Task name, exactly as received."),
    _f("task_type", _STR, "parent-task / persona-task / tool-call-task (free text)."),
    _f("status", _STR, "Task status (free text)."),
    _f("subtree", _STR, "Root list it came from: `completed` or `not_completed`.", False),
    _f("ordinal", _I64, "Preorder position over completed then not_completed.", nullable=False),
    _f("parent_ordinal", _I64, "ordinal of the parent row; null for roots."),
    _f("root_ordinal", _I64, "ordinal of the root row.", nullable=False),
    _f("child_count", _I64, "Number of children (0 if children is null/absent/not a list).", False),
    _f(
        "raw_json",
        _BIG,
        "The task's exact JSON text without its `children` array (children are rows).",
        nullable=False,
    ),
    _raw_bytes("the task (without children)"),
]

_ARTIFACTS = [
    _run_id(),
    _f("artifact_id", _STR, "Artifact `id` (the canvas node that produced it)."),
    _f("type", _STR, "Artifact type tag (docx, xlsx, ...; free text)."),
    _f("name", _STR, "File name as received: plain data, never used as a path."),
    _f("reported_size_bytes", _I64, "size_bytes as reported by the API."),
    _f("size_bytes", _I64, "Bytes actually downloaded; null if the download failed."),
    _f("sha256", _STR, "sha256 hex of the downloaded bytes."),
    _f("storage_uri", _STR, "Archive key of the bytes: artifacts/sha256/<2 hex>/<sha256>."),
    _f("content_type", _STR, "Content-Type of the download response."),
    _f("downloaded_at", _TS, "When the bytes were downloaded (UTC)."),
    _f("download_error", _BIG, "Why the download failed; null on success."),
    _f("ordinal", _I64, "Position among the run's artifacts.", nullable=False),
    _f(
        "raw_json",
        _BIG,
        "The artifact object as received minus `download_url` (re-serialised JSON).",
        nullable=False,
    ),
]

_RUN_ERRORS = [
    _run_id(),
    _f("idx", _I64, "Position in the run's `errors` array (0 for a non-list value).", False),
    _f("error", _BIG, "`error` message (or the element itself if it is a string)."),
    _f("block_id", _STR, "errors[].block_id, if present."),
    _f("block_type", _STR, "errors[].block_type, if present."),
    _f("recoverable", _BOOL, "errors[].recoverable if it is a boolean, else null."),
    _f("raw_json", _BIG, "The error element's exact JSON text.", nullable=False),
    _raw_bytes("the error element"),
]


def _schema(name: str, fields: list[pa.Field], *, load_cols: bool = True) -> pa.Schema:
    cols = fields + (_load_cols() if load_cols else [])
    return pa.schema(cols, metadata=parquet_metadata(name))


def parquet_metadata(table: str) -> dict[bytes, bytes]:
    """Key-value metadata every Parquet file of `table` carries (already on TABLES schemas)."""
    return {
        META_SCHEMA_VERSION.encode(): SCHEMA_VERSION.encode(),
        META_TABLE.encode(): table.encode(),
    }


# runs lists archived_at/batch_id itself (docs/contracts.md order); the other tables get them last.
TABLES: dict[str, pa.Schema] = {
    "runs": _schema("runs", _RUNS, load_cols=False),
    "blocks": _schema("blocks", _BLOCKS),
    "block_sources": _schema("block_sources", _BLOCK_SOURCES),
    "edges": _schema("edges", _EDGES),
    "tasks": _schema("tasks", _TASKS),
    "artifacts": _schema("artifacts", _ARTIFACTS),
    "run_errors": _schema("run_errors", _RUN_ERRORS),
}


def schema_for(table: str) -> pa.Schema:
    """The schema of `table`; KeyError names the known tables."""
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; known: {', '.join(TABLES)}") from None


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_list(t):
        return f"list<{t.value_type}>"
    return str(t)


def render_tables_markdown() -> str:
    """The per-table column reference of docs/archive-format.md, generated from TABLES."""
    out: list[str] = []
    for name, schema in TABLES.items():
        out.append(f"### `{name}`\n")
        out.append("| column | type | null | meaning |")
        out.append("|---|---|---|---|")
        for f in schema:
            desc = (f.metadata or {}).get(b"description", b"").decode()
            desc = desc.replace("|", "\\|")
            null = "yes" if f.nullable else "no"
            out.append(f"| `{f.name}` | `{_type_name(f.type)}` | {null} | {desc} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
