"""Refresh or rebuild the audit database: one snapshot, built and published.

A refresh catches up the spare snapshot (`snapshot.py`) with the manifests committed since
(`ingest.py`, which also extends the search index, `search_index.py`), mirrors the ledger
(`ledger_mirror.py`) and publishes it; a rebuild does the same into a new file from the
archive alone. Both first check the archive's log against the checkpoints the published
database ingested, and record the archive's newest checkpoint (`history.py`).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from spine_pipeline.archive.signing import VerifyKeys
from spine_pipeline.archive.stores import ObjectStore, open_store
from spine_pipeline.audit.ddl import ensure_schema, recount_search_stats, refill_run_facts
from spine_pipeline.audit.duck import load_extension, sql_str
from spine_pipeline.audit.history import LogGuard, Memory, load_verify_keys, read_memory
from spine_pipeline.audit.ingest import (
    IngestError,
    IngestReport,
    get_state,
    ingest_manifests,
    new_manifests,
    refuse_repeated_runs_bulk,
    set_state,
)
from spine_pipeline.audit.ledger_mirror import (
    adopt_ledger_records,
    mirror_submissions,
    mirror_webhook_events,
    refresh_inflight,
)
from spine_pipeline.audit.search_index import cluster_search_index
from spine_pipeline.audit.snapshot import paths_for, prepare_spare, publish, writer_lock
from spine_pipeline.progress import ProgressFn, Step, no_progress
from spine_pipeline.settings import Settings


def _normal_uri(uri: str) -> str:
    uri = uri.strip()
    if uri.lower().startswith("s3://"):
        return uri.rstrip("/")
    return str(Path(uri.removeprefix("file://")).absolute())


def normal_archive_uri(uri: str) -> str:
    """The archive URI as the audit database records it (`audit_state.archive_uri`), so a
    reader (`spine-pipeline info`) can tell whether a database was built from this archive."""
    return _normal_uri(uri)


def ingest_into(
    con: duckdb.DuckDBPyConnection,
    store: ObjectStore,
    archive_uri: str,
    report: IngestReport,
    published_seq: int = 0,
    published: Path | None = None,
    bulk: bool = False,
    *,
    memory: Memory | None = None,
    keys: VerifyKeys | None = None,
    progress: ProgressFn = no_progress,
) -> None:
    """Bring an open read-write audit database up to date with the archive.

    Manifests up to `published_seq` are already visible to readers (a reused spare catches
    up on them); only later ones count as new in the report. `published` (the snapshot a
    reused spare lags behind) lends its ledger records, so none is fetched twice. `bulk`
    (a new file, unseen until published) derives the search statistics and run facts once
    at the end instead of per manifest. `memory` is what the published database remembers
    of the log (`history.read_memory`); `keys` are SPINE_VERIFY_KEY's, when set.
    `progress` hears of each phase and each manifest (group) ingested.
    """
    load_extension(con, "fts")
    ensure_schema(con)
    uri = _normal_uri(archive_uri)
    recorded = get_state(con, "archive_uri")
    if recorded is not None and recorded != uri:
        raise IngestError(
            f"the audit database was built from {recorded}, not {uri}; "
            "run `spine-pipeline audit rebuild`"
        )
    set_state(con, "archive_uri", uri)
    progress(Step("audit: reading the manifest log"))

    set_state(con, "refreshed_at", datetime.now(UTC).isoformat(timespec="seconds"))
    guard = LogGuard.observe(store, keys)  # before the manifests: see LogGuard
    anchor, manifests = new_manifests(con, store)
    guard.check(con, anchor, manifests, memory or Memory(), archive_uri=uri, fresh=bulk)
    ingest_manifests(
        con,
        store,
        report,
        published_seq,
        bulk,
        manifests=manifests,
        signatures_verified=keys is not None,
        progress=progress,
    )
    guard.record(con, report)
    if published is not None:
        adopt_ledger_records(con, published, uri)
    progress(Step("audit: mirroring the ledger"))
    mirror_submissions(con, store, report, bulk)
    mirror_webhook_events(con, store, report)
    refresh_inflight(con, store, report)
    if bulk:
        progress(Step("audit: search statistics and run facts"))
        refuse_repeated_runs_bulk(con)
        con.execute("BEGIN TRANSACTION")
        try:
            recount_search_stats(con)
            refill_run_facts(con)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


CHECKPOINT_THRESHOLD = "256MB"


def _published_seq(published: Path) -> int:
    """The last manifest readers can see now (0 without a published snapshot)."""
    if not published.exists():
        return 0
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH {sql_str(str(published))} AS pub (READ_ONLY)")
        row = con.execute("SELECT max(seq) FROM pub.manifests").fetchone()
    except duckdb.Error:
        return 0
    finally:
        con.close()
    return int(row[0]) if row and row[0] is not None else 0


def _build_snapshot(
    archive_uri: str | None,
    db_path: str | os.PathLike[str] | None,
    *,
    fresh: bool,
    store: ObjectStore | None,
    progress: ProgressFn = no_progress,
) -> IngestReport:
    """Build the next snapshot of the audit database and publish it, under the writer lock.

    `fresh` builds it from the archive alone in a new file (a rebuild); otherwise the spare
    is reused or copied from the published snapshot and caught up (`snapshot.prepare_spare`).
    """
    settings = Settings.from_env()
    keys = load_verify_keys(settings.verify_key)
    archive_uri = archive_uri or settings.archive_uri
    paths = paths_for(db_path or settings.audit_db)
    store = store or open_store(archive_uri)
    started = time.perf_counter()
    report = IngestReport(db_path=str(paths.published))
    with writer_lock(paths):
        published_seq = 0 if fresh else _published_seq(paths.published)
        memory = read_memory(paths.published)  # before a rebuild replaces it
        spare, how = prepare_spare(paths, fresh=fresh)
        report.snapshot = how
        con = duckdb.connect(str(spare))
        try:
            con.execute("SET TimeZone = 'UTC'")
            # One transaction per manifest; at DuckDB's default 16 MB WAL threshold nearly
            # every commit also checkpointed (half of a rebuild's time). The explicit
            # CHECKPOINT below still runs before the snapshot is published.
            con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
            ingest_into(
                con,
                store,
                archive_uri,
                report,
                published_seq,
                published=paths.published if how == "reused" else None,
                bulk=how == "new",
                memory=memory,
                keys=keys,
                progress=progress,
            )
            if how == "new":
                progress(Step("audit: clustering the search index"))
                cluster_search_index(con)
            progress(Step("audit: writing the snapshot"))
            con.execute("CHECKPOINT")
        finally:
            con.close()
        publish(paths)
    report.seconds = time.perf_counter() - started
    return report


def refresh_audit_db(
    archive_uri: str | None = None,
    db_path: str | os.PathLike[str] | None = None,
    *,
    store: ObjectStore | None = None,
    progress: ProgressFn = no_progress,
) -> IngestReport:
    """Ingest manifests committed since the last refresh and publish a new snapshot.

    Defaults come from SPINE_ARCHIVE_URI / SPINE_AUDIT_DB. Idempotent: with nothing new it
    only refreshes the submissions and in-flight tables. Raises IngestError (the published
    snapshot untouched) on a broken chain, a tampered or missing file, or a duplicate run.
    """
    return _build_snapshot(archive_uri, db_path, fresh=False, store=store, progress=progress)


def rebuild_audit_db(
    archive_uri: str | None = None,
    db_path: str | os.PathLike[str] | None = None,
    *,
    store: ObjectStore | None = None,
    progress: ProgressFn = no_progress,
) -> IngestReport:
    """Recreate the audit database from the archive alone (full chain check from seq 1)."""
    return _build_snapshot(archive_uri, db_path, fresh=True, store=store, progress=progress)
