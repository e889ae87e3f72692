"""Arrow tables to Parquet bytes: zstd, schema-versioned, hashed before they are stored."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from spine_pipeline.archive.schemas import parquet_metadata

ROW_GROUP_ROWS = 64_000


@dataclass(frozen=True)
class EncodedFile:
    data: bytes
    rows: int
    sha256: str


def encode_table(name: str, table: pa.Table) -> EncodedFile:
    """One Parquet file for one table; the schema version travels in its metadata."""
    meta = dict(table.schema.metadata or {})
    meta.update(parquet_metadata(name))
    table = table.replace_schema_metadata(meta)
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        row_group_size=ROW_GROUP_ROWS,
        use_dictionary=True,
        write_statistics=True,
    )
    data = sink.getvalue()
    return EncodedFile(data=data, rows=table.num_rows, sha256=hashlib.sha256(data).hexdigest())
