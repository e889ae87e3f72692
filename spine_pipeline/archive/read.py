"""Read committed tables straight from the archive (exactly the manifest-listed files).

For small reads without the audit database: the demo summary, checks, tests. Anything
bigger goes through DuckDB (`spine_pipeline.audit`).
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from spine_pipeline.archive.arrow_schemas import TABLES
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.stores import ObjectStore


def read_committed(
    store: ObjectStore,
    table: str,
    *,
    columns: list[str] | None = None,
    log: ManifestLog | None = None,
) -> pa.Table:
    """All committed rows of one archive table (an empty table if there are none)."""
    if table not in TABLES:
        raise ValueError(f"unknown archive table {table!r}")
    if log is None:
        log = ManifestLog(store)
        log.refresh()
    parts = [
        pq.read_table(io.BytesIO(store.get_bytes(f.key)), columns=columns)
        for manifest in log
        for f in manifest.files
        if f.table == table
    ]
    if not parts:
        schema = TABLES[table]
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(parts)
