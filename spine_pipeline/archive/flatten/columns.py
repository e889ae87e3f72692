"""Arrow columns for one table: rows collected as Python values, built once per run.

Strings from JSON escapes may hold lone surrogates, which Arrow refuses; they become U+FFFD
here (the row's raw JSON keeps the escape). A value of `ZERO_COPY_BYTES` or more given as
bytes (a big string's UTF-8, a view of the response body) becomes its own Arrow chunk over
the same memory, so a 20 MiB block is not copied on the way to Parquet.
"""

from __future__ import annotations

import struct
from typing import Any

import pyarrow as pa

from spine_pipeline.archive.arrow_schemas import TABLES
from spine_pipeline.archive.flatten.values import BUFFERS, Buffer
from spine_pipeline.spine.spool import release_resident
from spine_pipeline.spine.textfidelity import replace_surrogates

__all__ = ["ZERO_COPY_BYTES", "Cols"]

# A large_string/large_binary value at least this long gets its own zero-copy Arrow chunk.
ZERO_COPY_BYTES = 1 << 16


class Cols:
    """Column lists for one table; constant columns are filled at build time."""

    def __init__(self, table: str) -> None:
        self.schema = TABLES[table]
        self.names = set(self.schema.names)
        self.cols: dict[str, list[Any]] = {n: [] for n in self.schema.names}
        self.n = 0

    def add(self, **row: Any) -> None:
        extra = row.keys() - self.names
        if extra:
            raise KeyError(f"unknown columns {sorted(extra)}")
        for name, values in self.cols.items():
            values.append(row.get(name))
        self.n += 1

    def build(self, const: dict[str, Any], big: bool = False) -> pa.Table:
        """The Arrow table; `big` when a document had big strings (bytes values to expect)."""
        arrays: list[pa.Array | pa.ChunkedArray] = []
        for f in self.schema:
            values = [const[f.name]] * self.n if f.name in const else self.cols[f.name]
            arrays.append(_big_array(values, f.type) if big else _array(values, f.type))
        return pa.Table.from_arrays(arrays, schema=self.schema)


def _array(values: list[Any], type_: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=type_)
    except UnicodeEncodeError:  # a lone surrogate from a JSON \udXXX escape
        if pa.types.is_list(type_):
            values = [
                None
                if v is None
                else [replace_surrogates(x) if isinstance(x, str) else x for x in v]
                for v in values
            ]
        else:
            values = [replace_surrogates(v) if isinstance(v, str) else v for v in values]
        return pa.array(values, type=type_)


def _one_value(value: Buffer, type_: pa.DataType) -> pa.Array:
    """A one-value array over `value`'s memory (no copy); string values are UTF-8-checked.

    The check reads the whole value, so spooled values read before leave the resident set
    first (`spine.spool`): one big value resident at a time.
    """
    release_resident()
    offsets = pa.py_buffer(struct.pack("<2q", 0, memoryview(value).nbytes))
    array = pa.Array.from_buffers(type_, 1, [None, offsets, pa.py_buffer(value)])
    if pa.types.is_large_string(type_):
        array.validate(full=True)
    return array


def _big_array(values: list[Any], type_: pa.DataType) -> pa.Array | pa.ChunkedArray:
    """`_array` for columns that may hold bytes values: big ones become zero-copy chunks."""
    if not (pa.types.is_large_string(type_) or pa.types.is_large_binary(type_)):
        return _array(values, type_)
    chunks: list[pa.Array] = []
    run: list[Any] = []
    for v in values:
        if isinstance(v, BUFFERS) and memoryview(v).nbytes >= ZERO_COPY_BYTES:
            if run:
                chunks.append(_array(run, type_))
                run = []
            chunks.append(_one_value(v, type_))
        else:
            run.append(bytes(v) if isinstance(v, bytearray | memoryview) else v)
    if not chunks:
        return _array(run, type_)
    if run:
        chunks.append(_array(run, type_))
    return pa.chunked_array(chunks, type=type_)
