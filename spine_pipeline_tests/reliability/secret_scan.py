"""Look for secrets everywhere a run of the pipeline leaves bytes (invariant 5).

A plain byte search is not enough: Parquet pages are zstd-compressed, DuckDB compresses its
column segments, and SQLite can split a long value across overflow pages. So every file is
searched raw *and* decoded by what it is: Parquet through pyarrow (every value and all key-value
metadata), SQLite (Dagster's run storage and event logs) and DuckDB (the audit database)
through their own readers, row by row. Objects in S3 are read through the store.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import pyarrow.parquet as pq

_SQLITE_MAGIC = b"SQLite format 3\x00"
_PARQUET_MAGIC = b"PAR1"


@dataclass
class SecretScanner:
    """`secrets` maps a label to a value; `hits` lists (label, where) for every find."""

    secrets: dict[str, str]
    hits: list[tuple[str, str]] = field(default_factory=list)
    scanned: dict[str, int] = field(
        default_factory=lambda: {"files": 0, "objects": 0, "bytes": 0, "values": 0, "log_chars": 0}
    )

    def _needles(self) -> list[tuple[str, bytes]]:
        out = []
        for label, value in self.secrets.items():
            out.append((label, value.encode()))
            if value.startswith("sk_spine_"):  # the random part alone is a leak too
                out.append((f"{label} (tail)", value[len("sk_spine_") :].encode()))
            # So is the value as a server or a log may re-encode it (same for a plain key).
            for form, encoded in (
                ("json", json.dumps(value)[1:-1]),
                ("url", quote(value, safe="")),
            ):
                if encoded != value:
                    out.append((f"{label} ({form}-escaped)", encoded.encode()))
        return out

    def blob(self, where: str, data: bytes) -> None:
        self.scanned["bytes"] += len(data)
        for label, needle in self._needles():
            if needle in data:
                self.hits.append((label, where))

    def text(self, where: str, text: str) -> None:
        self.scanned["log_chars"] += len(text)
        self.blob(where, text.encode("utf-8", "surrogateescape"))

    def _values(self, where: str, values: Any) -> None:
        for value in values:
            self.scanned["values"] += 1
            if value is None:
                continue
            data = (
                value
                if isinstance(value, bytes | bytearray)
                else str(value).encode("utf-8", "surrogateescape")
            )
            for label, needle in self._needles():
                if needle in data:
                    self.hits.append((label, where))

    def parquet(self, where: str, data: bytes) -> None:
        table = pq.read_table(io.BytesIO(data))
        metadata = table.schema.metadata or {}
        self._values(f"{where} (metadata)", [*metadata.keys(), *metadata.values()])
        for name in table.column_names:
            self._values(f"{where}:{name}", table.column(name).to_pylist())

    def sqlite(self, where: str, path: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / path.name
            for suffix in ("", "-wal", "-shm"):
                src = path.with_name(path.name + suffix)
                if src.exists():
                    shutil.copy2(src, Path(tmp) / src.name)
            con = sqlite3.connect(copy)
            try:
                tables = [
                    r[0] for r in con.execute("select name from sqlite_master where type='table'")
                ]
                for table in tables:
                    for row in con.execute(f'select * from "{table}"'):
                        self._values(f"{where}:{table}", row)
            finally:
                con.close()

    def duckdb_file(self, where: str, path: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "scan.duckdb"
            shutil.copy2(path, copy)
            wal = path.with_name(path.name + ".wal")
            if wal.exists():
                shutil.copy2(wal, Path(tmp) / "scan.duckdb.wal")
            con = duckdb.connect(str(copy), read_only=True)
            try:
                tables = con.execute(
                    "select table_schema, table_name from information_schema.tables "
                    "where table_type = 'BASE TABLE'"
                ).fetchall()
                for schema, table in tables:
                    for row in con.execute(f'select * from "{schema}"."{table}"').fetchall():
                        self._values(f"{where}:{table}", row)
            finally:
                con.close()

    def file(self, path: Path) -> None:
        data = path.read_bytes()
        where = str(path)
        self.scanned["files"] += 1
        self.blob(where, data)
        if data.startswith(_PARQUET_MAGIC) and data.endswith(_PARQUET_MAGIC):
            self.parquet(where, data)
        elif data.startswith(_SQLITE_MAGIC):
            self.sqlite(where, path)
        elif data[8:12] == b"DUCK":
            self.duckdb_file(where, path)

    def tree(self, root: Path) -> None:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                self.file(path)

    def store(self, store: Any) -> None:
        for info in store.list(""):
            data = store.get_bytes(info.key)
            self.scanned["objects"] += 1
            where = store.url(info.key)
            self.blob(where, data)
            if data.startswith(_PARQUET_MAGIC) and data.endswith(_PARQUET_MAGIC):
                self.parquet(where, data)

    def summary(self) -> str:
        s = self.scanned
        return (
            f"{s['files']} files, {s['objects']} objects, {s['bytes']:,} bytes, "
            f"{s['values']:,} decoded values, {s['log_chars']:,} log characters: "
            f"{len(self.hits)} hits"
        )
