"""Arrow tables to Parquet bytes: zstd, schema-versioned, hashed before they are stored.

A file with a big value (a 20 MiB block's `content` and `raw_json`) is written differently,
because Arrow's Parquet writer copies values, and for one huge value each copy is its size:

* its big columns get no dictionary and no min/max statistics: both would copy the value
  (the dictionary memo table; min and max each), and neither is worth it: such values are
  unique, and Arrow drops statistics longer than 4 KiB from the file anyway;
* its data pages are version 2: a V1 page concatenates levels and values into a new buffer,
  one more copy of the value (measured for one 21 MiB value: 48 MB of writer memory with V1
  pages, 28 MB with V2). V2 pages are in the Parquet spec since 2.0 and read by pyarrow,
  DuckDB, Trino/Athena and Spark; the schema and every value are the same.

* the values of those columns are spooled buffers (`spine.spool`: the body a big string
  was read from, its decoded value), and the sink takes their pages out of the resident set
  at each write (`_ReleasingSink`): a page reaches the sink once Arrow has copied its
  value, so while the next big column is written, the previous one's value is not resident.
  While the file is written a `spool.Pager` thread also drops them every millisecond, behind
  Arrow's copy of a value into its page. The bytes are unchanged (a dropped page is read
  again from its file).

Ordinary tables, the common case, are written exactly as before (their size is checked
first, in O(columns)).
"""

from __future__ import annotations

import hashlib
import io
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spine_pipeline.archive.arrow_schemas import parquet_metadata
from spine_pipeline.spine import rawjson
from spine_pipeline.spine.spool import Pager, release_resident

ROW_GROUP_ROWS = 64_000
# Data page version of files with big values (see above); "1.0" trades ~20 MB per 20 MiB value.
BIG_PAGE_VERSION = "2.0"


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
    big = _big_columns(table)
    sink = _ReleasingSink() if big else io.BytesIO()
    release_resident()  # what flattening read: the big values are read again column by column
    plain: bool | list[str] = [n for n in table.column_names if n not in big] if big else True
    with Pager() if big else nullcontext():
        pq.write_table(
            table,
            sink,
            compression="zstd",
            row_group_size=ROW_GROUP_ROWS,
            use_dictionary=plain,
            write_statistics=plain,
            data_page_version=BIG_PAGE_VERSION if big else "1.0",
        )
    data = sink.getvalue()
    return EncodedFile(data=data, rows=table.num_rows, sha256=hashlib.sha256(data).hexdigest())


class _ReleasingSink(io.BytesIO):
    """An in-memory sink that drops spooled pages from the resident set at each write."""

    def write(self, data: Any, /) -> int:
        release_resident()
        return super().write(data)


def _big_columns(table: pa.Table) -> set[str]:
    """Names of the large_string/large_binary columns holding a value of BIG_STRING_BYTES+."""
    limit = rawjson.BIG_STRING_BYTES
    out = set()
    for field, column in zip(table.schema, table.columns, strict=True):
        if not (pa.types.is_large_string(field.type) or pa.types.is_large_binary(field.type)):
            continue
        # Buffer sizes first (cheap; `Table.nbytes` took milliseconds on a 100-chunk table).
        if column.get_total_buffer_size() < limit:
            continue
        if (pc.max(pc.binary_length(column)).as_py() or 0) >= limit:
            out.add(field.name)
    return out
