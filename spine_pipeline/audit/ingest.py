"""Committed manifests -> the audit database's tables, incrementally, idempotently, verified.

Per new manifest, in one transaction: the chain link is checked (`ManifestLog`), every
listed file is fetched once, its size and sha256 compared with the manifest, and only then
parsed and inserted; the manifest row, its run facts and the search postings of its runs
(`search_index`) go in with it. A manifest is therefore ingested wholly or not at all, and
never twice (the `manifests` primary key and an explicit check of the run ids refuse a
repeat). A rebuild, unseen until published, takes BULK_GROUP manifests per transaction.
Only the keys a manifest lists are read, never a glob, so files of uncommitted batches stay
invisible.

Bytes are fetched once and the very bytes that were hashed are parsed (no hash-then-read
race): locally from the file, on S3 by DuckDB's httpfs (`read_blob`) with a secret built
from boto3's credential chain.

Also here, because every step of a refresh shares them: `IngestError`, `IngestReport` and
the `audit_state` bookkeeping. The refresh itself (snapshots, ledger mirror, entry points)
is `audit/refresh.py`.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from spine_pipeline.archive.layout import key_dt, manifest_key
from spine_pipeline.archive.manifest import (
    Manifest,
    ManifestError,
    ManifestLog,
    sha256_hex,
)
from spine_pipeline.archive.stores import ObjectStore
from spine_pipeline.audit.ddl import DATA_TABLES, data_columns, run_facts_select
from spine_pipeline.audit.duck import AuditError, configure_s3
from spine_pipeline.audit.search_index import index_manifests
from spine_pipeline.progress import ProgressFn, Step, no_progress

log = logging.getLogger(__name__)


class IngestError(AuditError):
    """The archive cannot be ingested as it is (broken chain, tampered file, duplicate)."""


@dataclass
class IngestReport:
    """What one refresh did: what Dagster shows as metadata and the CLI prints."""

    db_path: str
    manifests: list[int] = field(default_factory=list)  # new to readers
    caught_up: list[int] = field(default_factory=list)  # re-ingested into the reused spare
    rows: Counter[str] = field(default_factory=Counter)
    submissions: int = 0
    inflight: int = 0
    tracked_read: int = 0  # tracking records fetched (only those no earlier refresh read)
    webhook_events: int = 0  # webhook events new to the database
    last_seq: int = 0
    snapshot: str = ""  # new | reused | copied
    seconds: float = 0.0
    bytes_verified: int = 0
    checkpoint_size: int | None = None  # the newest checkpoint the database holds
    checkpoint_verified: bool = False  # its signature was checked with SPINE_VERIFY_KEY

    def summary(self) -> str:
        rows = ", ".join(f"{t}={n}" for t, n in sorted(self.rows.items()) if n)
        checkpoint = ""
        if self.checkpoint_size is not None:
            how = "verified" if self.checkpoint_verified else "signature not verified"
            checkpoint = f"checkpoint {self.checkpoint_size} ({how}); "
        return (
            f"ingested {len(self.manifests)} manifest(s) (last seq {self.last_seq}), "
            f"{self.submissions} submission record(s), {self.inflight} run(s) in flight; "
            f"rows: {rows or 'none'}; {checkpoint}{self.seconds:.2f} s"
        )


def get_state(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    """A bookkeeping value of the refreshes (`audit_state`): what they resume from."""
    row = con.execute("SELECT value FROM audit_state WHERE key = ?", [key]).fetchone()
    return row[0] if row else None


def set_state(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    con.execute("INSERT OR REPLACE INTO audit_state VALUES (?, ?)", [key, value])


def last_ingested(con: duckdb.DuckDBPyConnection) -> tuple[int, str | None]:
    """Seq and sha256 of the newest ingested manifest: the anchor the next chain check
    starts from ((0, None) for an empty database)."""
    row = con.execute("SELECT seq, sha256 FROM manifests ORDER BY seq DESC LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, None)


class Fetcher:
    """Gets the bytes of an archive object: from disk, or from S3 through DuckDB httpfs."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._con: duckdb.DuckDBPyConnection | None = None

    def get(self, key: str) -> bytes:
        url = self.store.url(key)
        if not url.startswith("s3://"):
            try:
                return Path(url).read_bytes()
            except FileNotFoundError:
                raise IngestError(f"{key}: listed by a manifest but missing") from None
        if self._con is None:
            self._con = duckdb.connect(":memory:")
            configure_s3(self._con)
        try:
            row = self._con.execute("SELECT content FROM read_blob(?)", [url]).fetchone()
        except duckdb.Error as exc:
            msg = str(exc).splitlines()[0]
            if "404" in msg or "No files found" in msg or "not found" in msg.lower():
                raise IngestError(f"{key}: listed by a manifest but missing") from None
            raise IngestError(f"{key}: could not read from S3 ({msg})") from None
        return bytes(row[0]) if row and row[0] is not None else b""

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def new_manifests(
    con: duckdb.DuckDBPyConnection, store: ObjectStore
) -> tuple[Manifest | None, list[Manifest]]:
    """The last ingested manifest (the anchor, None for an empty database) as the archive
    holds it now, and the manifests after it, with the chain checked from that anchor.

    The anchor itself is re-read and re-hashed: a manifest changed after it was ingested is
    refused here rather than silently chained onto. A rebuild checks the chain from seq 1.
    """
    last_seq, last_sha = last_ingested(con)
    try:
        anchor = None
        if last_seq == 0:
            manifest_log = ManifestLog(store)
        else:
            key = manifest_key(last_seq)
            if not store.exists(key):
                raise IngestError(f"{key}: ingested earlier but now missing from the archive")
            data = store.get_bytes(key)
            if sha256_hex(data) != last_sha:
                raise IngestError(f"{key}: changed since it was ingested (sha256 mismatch)")
            anchor = Manifest.from_bytes(data, key=key)
            manifest_log = ManifestLog(store, manifests=[anchor])
        return anchor, manifest_log.refresh()
    except ManifestError as exc:
        raise IngestError(f"refusing to ingest: {exc}") from None


def verified_table(fetcher: Fetcher, manifest: Manifest, entry: Any) -> pa.Table:
    """The rows of one manifest-listed file, after its size, sha256 and row count matched the
    manifest (the DuckLake publisher checks files with it too: one rule for both)."""
    data = fetcher.get(entry.key)
    if len(data) != entry.bytes:
        raise IngestError(
            f"{entry.key}: size {len(data)} does not match manifest {manifest.seq} "
            f"({entry.bytes} bytes); refusing to ingest"
        )
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry.sha256:
        raise IngestError(
            f"{entry.key}: sha256 {actual} does not match manifest {manifest.seq} "
            f"({entry.sha256}); refusing to ingest"
        )
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(f"{entry.key}: not readable Parquet ({exc})") from None
    if table.num_rows != entry.rows:
        raise IngestError(f"{entry.key}: {table.num_rows} rows, manifest says {entry.rows}")
    return table


def check_file_runs(manifest: Manifest, entry: Any, arrow: pa.Table) -> set[str]:
    """The run ids of a verified file, refusing rows of runs the manifest does not name."""
    run_ids = set(manifest.run_ids)
    file_runs = set(arrow.column("run_id").to_pylist()) if arrow.num_rows else set()
    if not file_runs <= run_ids:
        extra = sorted(str(r) for r in file_runs - run_ids)[:3]
        raise IngestError(
            f"{entry.key}: rows of runs the manifest does not name ({', '.join(extra)})"
        )
    return file_runs


def check_runs_covered(manifest: Manifest, seen_runs: set[str]) -> None:
    """Refuse a manifest whose runs files lack a row for a run it names."""
    run_ids = set(manifest.run_ids)
    if seen_runs != run_ids:
        missing = sorted(run_ids - seen_runs)[:3]
        raise IngestError(f"manifest {manifest.seq}: no runs row for run(s) {', '.join(missing)}")


def _insert(
    con: duckdb.DuckDBPyConnection, table: str, arrow: pa.Table, dt: str | None, seq: int
) -> None:
    cols = [c for c in data_columns(table) if c in arrow.column_names]
    names = ", ".join(f'"{c}"' for c in cols)
    con.register("_audit_src", arrow.select(cols))
    try:
        con.execute(
            f"INSERT INTO {table} ({names}, dt, manifest_seq) "
            f"SELECT {names}, ?::DATE, ? FROM _audit_src",
            [dt, seq],
        )
    finally:
        con.unregister("_audit_src")


@dataclass
class _Pending:
    """Verified files of a rebuild's group not inserted yet: table -> [(rows, dt, seq)], in
    order, and their Arrow buffers' size."""

    files: dict[str, list[tuple[pa.Table, str | None, int]]] = field(default_factory=dict)
    nbytes: int = 0


#: A rebuild inserts its pending files once they hold this much (Arrow bytes), so a group of
#: manifests with big blocks is not held in memory whole.
PENDING_BYTES = 64 << 20
#: Files' bytes (as committed) a rebuild fetches, verifies and parses ahead of its inserts.
LOOKAHEAD_BYTES = 64 << 20
#: A manifest's verified files by key, or the error that stopped its verification.
_Prepared = dict[str, "pa.Table | IngestError"]


def _prepare(fetcher: Fetcher, manifest: Manifest) -> _Prepared:
    """Fetch, verify and parse a manifest's data files, stopping at the first bad one."""
    out: _Prepared = {}
    for entry in manifest.files:
        if entry.table not in DATA_TABLES:
            continue
        try:
            out[entry.key] = verified_table(fetcher, manifest, entry)
        except IngestError as exc:
            out[entry.key] = exc
            break
    return out


class Prefetch:
    """A rebuild's next manifests fetched, verified and parsed in one worker thread while
    DuckDB inserts and indexes the current ones (sha256 and pyarrow release the GIL).

    One worker, so the fetcher (an S3 connection) is used by one thread at a time; bounded
    by LOOKAHEAD_BYTES of committed files ahead (always at least the next manifest).
    """

    def __init__(self, fetcher: Fetcher, manifests: list[Manifest]) -> None:
        self._fetcher = fetcher
        self._todo = deque(manifests)
        self._ahead: deque[tuple[Manifest, Future[_Prepared], int]] = deque()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-prefetch")

    def _top_up(self) -> None:
        ahead = sum(size for _, _, size in self._ahead)
        while self._todo and (not self._ahead or ahead < LOOKAHEAD_BYTES):
            manifest = self._todo.popleft()
            size = sum(e.bytes for e in manifest.files)
            future = self._pool.submit(_prepare, self._fetcher, manifest)
            self._ahead.append((manifest, future, size))
            ahead += size

    def take(self, manifest: Manifest) -> _Prepared:
        """`manifest`'s prepared files (manifests are taken in the order given)."""
        self._top_up()
        expected, future, _ = self._ahead.popleft()
        if expected is not manifest:
            raise RuntimeError("prefetched manifests taken out of order")
        self._top_up()
        return future.result()

    def close(self) -> None:
        for _, future, _ in self._ahead:
            future.cancel()
        self._pool.shutdown(wait=True)


def _insert_pending(con: duckdb.DuckDBPyConnection, pending: _Pending) -> None:
    """Insert a rebuild group's files with one statement per table and column set.

    Rows keep their order (manifest order, then file order), which the search index's row
    pointers rely on (`search_index._row_shift`). A statement per file (register, insert,
    unregister) was the largest part of a rebuild (docs/benchmarks.md).
    """
    for table, files in pending.files.items():
        runs_of: list[list[tuple[pa.Table, str | None, int]]] = []
        for item in files:  # consecutive files with the same columns go together
            if runs_of and runs_of[-1][0][0].column_names == item[0].column_names:
                runs_of[-1].append(item)
            else:
                runs_of.append([item])
        for group in runs_of:
            cols = [c for c in data_columns(table) if c in group[0][0].column_names]
            parts = [
                t.select(cols)
                .append_column("_dt", pa.array([dt] * t.num_rows, pa.string()))
                .append_column("_seq", pa.array([seq] * t.num_rows, pa.int64()))
                for t, dt, seq in group
            ]
            names = ", ".join(f'"{c}"' for c in cols)
            con.register("_audit_src", pa.concat_tables(parts, promote_options="permissive"))
            try:
                con.execute(
                    f"INSERT INTO {table} ({names}, dt, manifest_seq) "
                    f"SELECT {names}, _dt::DATE, _seq FROM _audit_src"
                )
            finally:
                con.unregister("_audit_src")
    pending.files.clear()
    pending.nbytes = 0


def _load_manifest(
    con: duckdb.DuckDBPyConnection,
    fetcher: Fetcher,
    manifest: Manifest,
    report: IngestReport,
    bulk: bool,
    signatures_verified: bool,
    pending: _Pending | None = None,
    prefetch: Prefetch | None = None,
) -> Counter[str]:
    """Verify and insert the manifest's files and its row (in the caller's transaction).

    With `pending` (a rebuild's group) the verified files are queued there for
    `_insert_pending` instead of inserted one by one."""
    seen_runs: set[str] = set()
    rows: Counter[str] = Counter()
    prepared = prefetch.take(manifest) if prefetch is not None else None
    for entry in manifest.files:
        if entry.table not in DATA_TABLES:
            log.warning("manifest %s: skipping unknown table %s", manifest.seq, entry.key)
            continue
        if prepared is None:
            arrow = verified_table(fetcher, manifest, entry)
        else:
            got = prepared[entry.key]
            if isinstance(got, IngestError):
                raise got
            arrow = got
        report.bytes_verified += entry.bytes
        file_runs = check_file_runs(manifest, entry, arrow)
        if entry.table == "runs":
            seen_runs |= file_runs
            if not bulk:
                _refuse_repeated_runs(con, manifest.seq, arrow)
        if pending is None:
            _insert(con, entry.table, arrow, key_dt(entry.key), manifest.seq)
        else:
            pending.files.setdefault(entry.table, []).append(
                (arrow, key_dt(entry.key), manifest.seq)
            )
            pending.nbytes += arrow.get_total_buffer_size()
            if pending.nbytes > PENDING_BYTES:
                _insert_pending(con, pending)
        rows[entry.table] += arrow.num_rows
    check_runs_covered(manifest, seen_runs)
    insert_manifest_row(con, manifest, signatures_verified)
    return rows


# A rebuild (a new file nobody reads until it is published) ingests this many manifests
# per transaction and indexes them together: per-statement and per-commit costs were about
# 40 % of a rebuild's time at one manifest per transaction.
BULK_GROUP = 50


def _ingest_group(
    con: duckdb.DuckDBPyConnection,
    fetcher: Fetcher,
    group: list[Manifest],
    report: IngestReport,
    published_seq: int,
    bulk: bool = False,
    signatures_verified: bool = False,
    prefetch: Prefetch | None = None,
) -> None:
    """Ingest manifests in one transaction: all of them or none.

    A refresh passes one manifest at a time, so each is visible wholly or not at all; a
    rebuild passes up to BULK_GROUP (nothing is published until every one is in).
    """
    first, last = group[0].seq, group[-1].seq
    per_manifest: list[Counter[str]] = []
    con.execute("BEGIN TRANSACTION")
    try:
        pending = _Pending() if bulk else None
        for manifest in group:
            per_manifest.append(
                _load_manifest(
                    con, fetcher, manifest, report, bulk, signatures_verified, pending, prefetch
                )
            )
        if pending is not None:
            _insert_pending(con, pending)
        if not bulk:
            con.execute(
                "INSERT INTO run_facts_stored "
                f"{run_facts_select('WHERE r.manifest_seq BETWEEN $first AND $last')}",
                {"first": first, "last": last},
            )
        docs = index_manifests(con, first, last, bulk)
        set_state(con, "last_seq", str(last))
        con.execute("COMMIT")
    except duckdb.ConstraintException as exc:
        con.execute("ROLLBACK")
        which = f"manifest {first}" if first == last else f"manifests {first}-{last}"
        raise IngestError(
            f"{which}: would duplicate rows already ingested "
            f"({str(exc).splitlines()[0]}); refusing to ingest"
        ) from None
    except BaseException:
        con.execute("ROLLBACK")
        raise
    report.last_seq = last
    for manifest, rows in zip(group, per_manifest, strict=True):
        if manifest.seq <= published_seq:
            report.caught_up.append(manifest.seq)
        else:
            report.manifests.append(manifest.seq)
            report.rows.update(rows)
    if last > published_seq:  # a group is all new or (a refresh's single manifest) not
        report.rows["search_docs"] += docs


def _refuse_repeated_runs(con: duckdb.DuckDBPyConnection, seq: int, runs: pa.Table) -> None:
    """Refuse a manifest whose runs file repeats a run, or names one already ingested.

    `runs` has no primary key (schema.UNKEYED_TABLES), so this keeps each run exactly once:
    a semi-join of the file's ids against the run_id column (cheap: docs/decisions.md). A
    rebuild checks once at the end instead (`refuse_repeated_runs_bulk`).
    """
    ids = runs.column("run_id").to_pylist()
    repeated = sorted(str(r) for r, n in Counter(ids).items() if n > 1)
    if not repeated:
        con.register("_audit_ids", runs.select(["run_id"]))
        try:
            repeated = [
                r[0]
                for r in con.execute(
                    "SELECT run_id FROM runs WHERE run_id IN (SELECT run_id FROM _audit_ids) "
                    "ORDER BY run_id LIMIT 3"
                ).fetchall()
            ]
        finally:
            con.unregister("_audit_ids")
    if repeated:
        raise IngestError(
            f"manifest {seq}: would duplicate rows already ingested (run "
            f"{', '.join(repeated[:3])}); refusing to ingest"
        )


def refuse_repeated_runs_bulk(con: duckdb.DuckDBPyConnection) -> None:
    """The rebuild's check, once over the whole table (nothing is published if it fails)."""
    repeated = con.execute(
        "SELECT run_id, max(manifest_seq) FROM runs GROUP BY run_id HAVING count(*) > 1 "
        "ORDER BY 2, 1 LIMIT 3"
    ).fetchall()
    if repeated:
        raise IngestError(
            f"manifest {repeated[0][1]}: would duplicate rows already ingested (run "
            f"{', '.join(r[0] for r in repeated)}); refusing to ingest"
        )


def ingest_manifests(
    con: duckdb.DuckDBPyConnection,
    store: ObjectStore,
    report: IngestReport,
    published_seq: int = 0,
    bulk: bool = False,
    *,
    manifests: list[Manifest] | None = None,
    signatures_verified: bool = False,
    progress: ProgressFn = no_progress,
) -> None:
    """Ingest every manifest committed after the last ingested one, in chain order.

    A refresh commits one manifest per transaction; `bulk` (a rebuild) BULK_GROUP at a time.
    `manifests` are those `new_manifests` returned, when the caller has read (and checked)
    them already; `signatures_verified` says their signatures were checked with a verify key.
    """
    fetcher = Fetcher(store)
    try:
        if manifests is None:
            manifests = new_manifests(con, store)[1]
        size = BULK_GROUP if bulk else 1
        prefetch = Prefetch(fetcher, manifests) if bulk else None
        try:
            for i in range(0, len(manifests), size):
                progress(Step("audit: ingesting manifests", i, len(manifests)))
                group = manifests[i : i + size]
                _ingest_group(
                    con, fetcher, group, report, published_seq, bulk, signatures_verified, prefetch
                )
            progress(Step("audit: ingesting manifests", len(manifests), len(manifests)))
        finally:
            if prefetch is not None:
                prefetch.close()
    finally:
        fetcher.close()
    report.last_seq = last_ingested(con)[0]


def insert_manifest_row(con: Any, manifest: Manifest, signature_verified: bool) -> None:
    """The `manifests` row of `manifest`: the one rule for the audit database and the
    DuckLake catalog (`signature_verified` is NULL for an unsigned manifest)."""
    signature = manifest.signature
    con.execute(
        "INSERT INTO manifests (seq, batch_id, committed_at, sha256, prev_sha256, run_count, "
        "file_count, artifact_count, schema_version, ingested_at, key_id, signature_verified) "
        "VALUES (?, ?, ?::TIMESTAMPTZ, ?, ?, ?, ?, ?, ?, now(), ?, ?)",
        [
            manifest.seq,
            manifest.batch_id,
            manifest.committed_at or None,
            manifest.sha256,
            manifest.prev_sha256,
            len(manifest.runs),
            len(manifest.files),
            len(manifest.artifacts),
            manifest.schema_version,
            signature.key_id if signature else None,
            signature_verified if signature else None,
        ],
    )
