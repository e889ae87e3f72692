"""Publish the archive's committed manifests to a DuckLake catalog (`SPINE_AUDIT_CATALOG`).

The audit DuckDB file is one machine's copy; a DuckLake catalog lets any DuckDB client (a
notebook, another host, a BI tool) ATTACH the audit tables read-only, with time travel. The
catalog holds no copy of the data: each manifest-listed Parquet file is registered as it is
(`ducklake_add_data_files`), so the archive's own files are the tables' data and only
metadata is written. The catalog is derived: `publish_catalog(rebuild=True)` recreates it
from the manifests alone.

Per manifest, in chain order, one DuckLake snapshot: every listed file is first fetched and
checked against the manifest by the audit's own rule (`ingest.verified_table`: size,
sha256, Parquet, row count, the runs it names), then registered, its `manifests` row
inserted and the snapshot's commit message set to `manifest <seq>` (extra info: seq, batch
id, sha256), so "as of manifest N" is `AT (VERSION => snapshot_of_manifest(N))`. A file
that does not match refuses its manifest before anything of it is registered. A rebuild
(a fresh catalog file, no other publisher) commits `REBUILD_GROUP` manifests per snapshot,
named after the group's last manifest, and verifies the next manifests' files in a thread
meanwhile: each snapshot costs a fixed amount of DuckLake metadata work, so one per
manifest made a 1,000,000-run rebuild take most of an hour (docs/decisions.md).

Publishers race safely. Every manifest's transaction re-reads the last published seq and
comments the `manifests` table: DuckLake makes two transactions that alter one table
conflict, so of two publishers of manifest N one commits and the other rolls back and
skips it. A catalog file (DuckDB locks it: one writer process, and a reader excludes the
writer) is written like the audit database: a spare copy is caught up and published with
an atomic rename under the writer lock (`snapshot.py`), so readers that attached it keep
reading. A Postgres catalog is written in place (readers see each commit).

What differs from the audit database: the data tables carry the archive's columns and `dt`
(from the Hive path) but no `manifest_seq` (the files do not hold it; join `manifests` on
`batch_id`), and the catalog has no ledger tables (submissions, in-flight runs, webhook
events) and no search index (FTS is DuckDB-native): `run_facts` is the report view over
the archived runs alone (docs/decisions.md).

Never compact, expire or clean up files in this catalog (`ducklake_merge_adjacent_files`,
`ducklake_cleanup_old_files`, ...): DuckLake owns the files it registered and would delete
archive files. Readers attach it READ_ONLY.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from spine_pipeline.archive.manifest import Manifest
from spine_pipeline.archive.stores import ObjectStore, open_store
from spine_pipeline.audit.ddl import (
    _FIXED_TABLES,
    ADDED_COLUMNS,
    DATA_TABLES,
    _columns,
    run_facts_select,
    views,
)
from spine_pipeline.audit.duck import AuditError, configure_s3, load_extension, sql_str
from spine_pipeline.audit.ingest import (
    Fetcher,
    IngestError,
    Prefetch,
    check_file_runs,
    check_runs_covered,
    insert_manifest_row,
    new_manifests,
    verified_table,
)
from spine_pipeline.audit.snapshot import paths_for, prepare_spare, publish, writer_lock
from spine_pipeline.settings import Settings, parse_audit_catalog

log = logging.getLogger(__name__)

PREFIX = "ducklake:"
POSTGRES = "postgres:"
ALIAS = "spine_lake"  # the name the publisher attaches the catalog under
AUTHOR = "spine-pipeline"
# Conflicts (another publisher won the manifest, or a metadata race) are retried this often.
MAX_ATTEMPTS = 5
#: Manifests a rebuild (`publish --rebuild`: a fresh catalog file under the writer lock, so
#: no other publisher) commits per DuckLake snapshot. A snapshot's commit costs a fixed
#: amount of DuckLake metadata work whatever it holds (docs/decisions.md), which one
#: snapshot per manifest paid 10,000 times at 1,000,000 runs; "as of manifest N" is exact
#: at each group's last manifest and for every manifest published after the rebuild.
REBUILD_GROUP = 100
# Catalog rows (`manifests`, `audit_state`) stay inlined in the metadata database: DuckLake
# then never writes a data file of its own, and the catalog is metadata only.
INLINING_ROW_LIMIT = 1_000_000
# Views of the audit database that read tables the catalog does not have.
_LEDGER_TABLES = ("run_facts_stored", "inflight_runs", "webhook_events")
# run_facts over the archived runs: manifest_seq by batch id, no ledger fallback.
_CATALOG_RUNS = "(SELECT runs.*, m.seq AS manifest_seq FROM runs JOIN manifests m USING (batch_id))"
_NO_SUBMISSIONS = (
    "(SELECT NULL::VARCHAR AS run_id, NULL::VARCHAR AS request_name, "
    "NULL::VARCHAR AS template, NULL::TIMESTAMPTZ AS submitted_at WHERE false)"
)


class CatalogError(AuditError):
    """The catalog cannot be published or read as it is (one line, never its password)."""


@dataclass(frozen=True)
class Catalog:
    """A parsed `SPINE_AUDIT_CATALOG`: a DuckDB catalog file, or Postgres."""

    # As configured, `ducklake:...`; it may hold a password, so it is never shown (nor in repr).
    value: str = field(repr=False)

    @property
    def is_postgres(self) -> bool:
        return self.value[len(PREFIX) :].startswith(POSTGRES)

    @property
    def path(self) -> Path:
        """The catalog file (only for a file catalog)."""
        return Path(self.value[len(PREFIX) :]).absolute()

    @property
    def shown(self) -> str:
        """How messages name it: the file, or just `ducklake:postgres` (conninfo hidden)."""
        return f"{PREFIX}{POSTGRES}..." if self.is_postgres else f"{PREFIX}{self.path}"

    def attach_target(self, path: Path | None = None) -> str:
        """The ATTACH string (for a file catalog, of `path` if given: the spare)."""
        if self.is_postgres:
            return self.value
        return f"{PREFIX}{path or self.path}"

    def data_path(self, audit_db: str) -> str:
        """DATA_PATH DuckLake requires at creation; nothing is written there (all inlined)."""
        if self.is_postgres:
            return str(Path(audit_db).absolute().parent / "ducklake-files") + "/"
        return f"{self.path}.files/"


def catalog_from_settings(value: str | None = None) -> Catalog | None:
    """The configured catalog (None when SPINE_AUDIT_CATALOG is unset)."""
    raw = value if value is not None else Settings.from_env().audit_catalog
    if raw is None:
        return None
    if value is not None:  # an explicit value gets the settings' check and one-line error
        parse_audit_catalog("SPINE_AUDIT_CATALOG", raw.strip())
        raw = raw.strip()
    return Catalog(raw)


@dataclass
class PublishReport:
    """What one publish did."""

    catalog: str  # Catalog.shown
    manifests: list[int] = field(default_factory=list)  # published by this call
    raced: list[int] = field(default_factory=list)  # published meanwhile by another publisher
    caught_up: list[int] = field(default_factory=list)  # re-published into the reused spare
    files: int = 0
    rows: Counter[str] = field(default_factory=Counter)
    bytes_verified: int = 0
    last_seq: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        raced = f", {len(self.raced)} published by another publisher" if self.raced else ""
        return (
            f"published {len(self.manifests)} manifest(s) (last seq {self.last_seq}){raced}, "
            f"{self.files} file(s) registered, {sum(self.rows.values())} row(s); "
            f"{self.seconds:.2f} s"
        )


# ----------------------------------------------------------------------------- connections


def _needs_s3(store: ObjectStore | None, archive_uri: str | None) -> bool:
    uri = archive_uri or ""
    return uri.lower().startswith("s3://") or (
        store is not None and store.url("x").startswith("s3://")
    )


def open_connection(catalog: Catalog, *, s3: bool) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the extensions a catalog needs, loaded from their pip
    packages (no download): ducklake, postgres for a Postgres catalog, httpfs and the S3
    secret (boto3's chain) when the archive is on S3."""
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        load_extension(con, "ducklake")
        if catalog.is_postgres:
            load_extension(con, "postgres")
        if s3:
            configure_s3(con)
    except BaseException:
        con.close()
        raise
    return con


def attach(
    con: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    alias: str = ALIAS,
    *,
    read_only: bool = True,
    path: Path | None = None,
    data_path: str | None = None,
    snapshot_version: int | None = None,
) -> None:
    """ATTACH the catalog as `alias`; errors are one line without the connection string."""
    options = ["READ_ONLY"] if read_only else []
    if data_path is not None:
        options.append(f"DATA_PATH {sql_str(data_path)}")
    if snapshot_version is not None:
        options.append(f"SNAPSHOT_VERSION {int(snapshot_version)}")
    opts = f" ({', '.join(options)})" if options else ""
    try:
        con.execute(f"ATTACH {sql_str(catalog.attach_target(path))} AS {alias}{opts}")
    except duckdb.Error as exc:
        raise CatalogError(
            f"could not attach the DuckLake catalog {catalog.shown}: {_first_line(exc, catalog)}"
        ) from None


def _first_line(exc: BaseException, catalog: Catalog) -> str:
    """DuckDB's first line, with the configured value (it may hold a password) masked."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    rest = catalog.value[len(PREFIX) :]
    for secret in (catalog.value, rest, rest[len(POSTGRES) :]):
        if secret:
            text = text.replace(secret, "***")
    return text


def snapshot_of_manifest(con: duckdb.DuckDBPyConnection, seq: int, alias: str = ALIAS) -> int:
    """The DuckLake snapshot whose state is "as of manifest N": the one that published it,
    or, in a rebuilt catalog, the one that published the group of manifests it ends. A
    manifest inside a rebuild's group has no snapshot of its own (the error says how to
    read as of it: filter the group's snapshot by batch id)."""
    row = con.execute(
        f"SELECT max(snapshot_id) FROM {alias}.snapshots() WHERE author = ? AND commit_message = ?",
        [AUTHOR, f"manifest {int(seq)}"],
    ).fetchone()
    if row and row[0] is not None:
        return int(row[0])
    last = con.execute(f"SELECT coalesce(max(seq), 0) FROM {alias}.manifests").fetchone()
    if last and 0 < seq <= int(last[0]):
        raise CatalogError(
            f"manifest {seq} was published by a rebuild in one snapshot with the manifests "
            f"after it (one snapshot per {REBUILD_GROUP}): as of manifest {seq}, read the "
            "next manifest's snapshot WHERE batch_id IN (SELECT batch_id FROM manifests "
            f"WHERE seq <= {seq})"
        )
    raise CatalogError(f"manifest {seq} is not published in the catalog")


@contextmanager
def reading_catalog(
    catalog: Catalog, *, s3: bool = False, as_of_manifest: int | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection with the catalog attached READ_ONLY as `ALIAS` and in use; with
    `as_of_manifest`, pinned to the snapshot that published that manifest."""
    con = open_connection(catalog, s3=s3)
    try:
        attach(con, catalog)
        if as_of_manifest is not None:
            version = snapshot_of_manifest(con, as_of_manifest)
            con.execute(f"DETACH {ALIAS}")
            attach(con, catalog, snapshot_version=version)
        con.execute(f"USE {ALIAS}")
        yield con
    finally:
        con.close()


# ----------------------------------------------------------------------------- schema


def _no_key(ddl: str) -> str:
    """DuckLake has no PRIMARY KEY: uniqueness is the publisher's (one row per seq)."""
    return ddl.replace(" PRIMARY KEY", "")


def _fixed_ddl(table: str) -> str:
    prefix = f"CREATE TABLE IF NOT EXISTS {table} ("
    (ddl,) = (d for d in _FIXED_TABLES if d.startswith(prefix))
    return _no_key(ddl)


def catalog_columns(table: str) -> list[tuple[str, str]]:
    """A data table's catalog columns: the audit database's, without manifest_seq."""
    return [(n, t) for n, t in _columns(table) if n != "manifest_seq"]


def catalog_views() -> list[str]:
    """The audit database's report views that the catalog's tables can serve."""
    run_facts = "CREATE OR REPLACE VIEW run_facts AS " + run_facts_select(
        runs=_CATALOG_RUNS, submissions=_NO_SUBMISSIONS
    )
    return [run_facts] + [v for v in views() if not any(t in v for t in _LEDGER_TABLES)]


def _schema_statements() -> list[str]:
    stmts = []
    for table in DATA_TABLES:
        cols = ",\n  ".join(f'"{c}" {t}' for c, t in catalog_columns(table))
        stmts.append(f"CREATE TABLE IF NOT EXISTS {table} (\n  {cols}\n)")
    stmts += [_fixed_ddl("manifests"), _fixed_ddl("audit_state")]
    return stmts


_VIEWS_STATE = "catalog_views_sha256"


def _wanted_columns() -> list[tuple[str, str, str]]:
    cols = [(t, c, typ) for t in DATA_TABLES for c, typ in catalog_columns(t)]
    return cols + [("manifests", c, typ) for c, typ in ADDED_COLUMNS["manifests"]]


def _missing_columns(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str]]:
    have: dict[str, set[str]] = {}
    for table, column in con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = ?", [ALIAS]
    ).fetchall():
        have.setdefault(table, set()).add(column)
    return [(t, c, typ) for t, c, typ in _wanted_columns() if c not in have.get(t, set())]


def ensure_catalog_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create missing tables, columns and views, in one snapshot, only if anything is missing
    (a publish with nothing to change adds no snapshot). Everything is read inside the
    transaction, so a publisher that created them meanwhile is seen, or conflicts."""
    view_ddl = catalog_views()
    views_sha = hashlib.sha256("\n".join(view_ddl).encode()).hexdigest()
    con.execute("BEGIN TRANSACTION")
    try:
        tables = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [ALIAS]
            ).fetchall()
        }
        recorded = None
        if "audit_state" in tables:
            row = con.execute(
                "SELECT value FROM audit_state WHERE key = ?", [_VIEWS_STATE]
            ).fetchone()
            recorded = row[0] if row else None
        if recorded == views_sha and not _missing_columns(con):
            con.execute("ROLLBACK")
            return
        for ddl in _schema_statements():
            con.execute(ddl)
        for table, name, typ in _missing_columns(con):
            con.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {typ}')
        if recorded != views_sha:
            for ddl in view_ddl:
                con.execute(ddl)
            con.execute("DELETE FROM audit_state WHERE key = ?", [_VIEWS_STATE])
            con.execute("INSERT INTO audit_state VALUES (?, ?)", [_VIEWS_STATE, views_sha])
        con.execute(f"CALL {ALIAS}.set_commit_message(?, ?)", [AUTHOR, "schema"])
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # a failed COMMIT already ended it
            con.execute("ROLLBACK")
        raise


# ----------------------------------------------------------------------------- publishing


def _last_published(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute("SELECT coalesce(max(seq), 0) FROM manifests").fetchone()
    return int(row[0]) if row else 0


def _is_conflict(exc: duckdb.Error) -> bool:
    text = str(exc)
    return "conflict" in text.lower() or "Failed to commit" in text


def _verify(
    fetcher: Fetcher,
    manifest: Manifest,
    report: PublishReport,
    prefetch: Prefetch | None = None,
) -> Counter[str]:
    """Check every listed file of the manifest (nothing is registered unless all match);
    with `prefetch`, its files were fetched, hashed and parsed ahead by the rebuild's rule
    (`ingest.Prefetch`, the same `verified_table`)."""
    rows: Counter[str] = Counter()
    seen: set[str] = set()
    prepared = prefetch.take(manifest) if prefetch is not None else {}
    for entry in manifest.files:
        if entry.table not in DATA_TABLES:
            log.warning("manifest %s: skipping unknown table %s", manifest.seq, entry.key)
            continue
        got = prepared.get(entry.key)
        if isinstance(got, IngestError):
            raise got
        arrow = got if got is not None else verified_table(fetcher, manifest, entry)
        runs = check_file_runs(manifest, entry, arrow)
        if entry.table == "runs":
            seen |= runs
        rows[entry.table] += arrow.num_rows
        report.bytes_verified += entry.bytes
    check_runs_covered(manifest, seen)
    return rows


def _commit_manifests(
    con: duckdb.DuckDBPyConnection, store: ObjectStore, manifests: list[Manifest]
) -> bool:
    """Register the manifests' files and rows in one snapshot (one manifest, or a rebuild's
    group: consecutive seqs); False if another publisher had published them already (then
    nothing was written). The commit message names the last one: the snapshot is the
    catalog as of that manifest."""
    first, manifest = manifests[0], manifests[-1]
    con.execute("BEGIN TRANSACTION")
    try:
        last = _last_published(con)
        if last >= manifest.seq:
            con.execute("ROLLBACK")
            return False
        if last != first.seq - 1:
            raise CatalogError(
                f"manifest {first.seq}: the catalog's last published manifest is {last}, "
                "not the one before it; run `spine-pipeline audit publish --rebuild`"
            )
        # The conflict point: two transactions altering one table cannot both commit.
        con.execute(f"COMMENT ON TABLE manifests IS {sql_str(f'through manifest {manifest.seq}')}")
        for m in manifests:
            for entry in m.files:
                if entry.table not in DATA_TABLES:
                    continue
                con.execute(
                    "CALL ducklake_add_data_files(?, ?, ?, hive_partitioning => true, "
                    "allow_missing => true, ignore_extra_columns => true)",
                    [ALIAS, entry.table, store.url(entry.key)],
                )
            insert_manifest_row(con, m, signature_verified=False)
        info: dict[str, object] = {
            "manifest_seq": manifest.seq,
            "batch_id": manifest.batch_id,
            "sha256": manifest.sha256,
        }
        if len(manifests) > 1:
            info["first_manifest_seq"] = first.seq
        extra = json.dumps(info)
        con.execute(
            f"CALL {ALIAS}.set_commit_message(?, ?, extra_info => ?)",
            [AUTHOR, f"manifest {manifest.seq}", extra],
        )
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # a failed COMMIT already ended it
            con.execute("ROLLBACK")
        raise
    return True


def _publish_manifests(
    con: duckdb.DuckDBPyConnection,
    store: ObjectStore,
    report: PublishReport,
    published_seq: int = 0,
    group: int = 1,
) -> None:
    """Publish every committed manifest after the catalog's last one, in chain order,
    `group` manifests per snapshot (more than one only for a rebuild, which also verifies
    the next manifests' files in a thread while DuckLake registers the current ones). A
    manifest that fails verification is refused after the ones before it are committed."""
    con.execute(f"USE {ALIAS}")
    for attempt in range(MAX_ATTEMPTS):  # two first publishers both create the tables
        try:
            ensure_catalog_schema(con)
            break
        except duckdb.Error as exc:
            racing = _is_conflict(exc) or "already exists" in str(exc)
            if not racing or attempt == MAX_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    fetcher = Fetcher(store)
    prefetch: Prefetch | None = None
    pending: list[tuple[Manifest, Counter[str]]] = []

    def commit_pending() -> None:
        if not pending:
            return
        batch = [m for m, _ in pending]
        for attempt in range(MAX_ATTEMPTS):
            try:
                done = _commit_manifests(con, store, batch)
                break
            except duckdb.Error as exc:
                if not _is_conflict(exc) or attempt == MAX_ATTEMPTS - 1:
                    raise CatalogError(
                        f"manifest {batch[0].seq}: could not publish to the catalog: "
                        f"{str(exc).splitlines()[0] if str(exc) else exc!r}"
                    ) from None
                time.sleep(0.05 * (attempt + 1))  # another publisher committed: re-check
        for manifest, rows in pending:
            if done and manifest.seq <= published_seq:
                report.caught_up.append(manifest.seq)
            elif done:
                report.manifests.append(manifest.seq)
                report.files += sum(1 for f in manifest.files if f.table in DATA_TABLES)
                report.rows.update(rows)
            else:
                report.raced.append(manifest.seq)
        pending.clear()

    try:
        _, manifests = new_manifests(con, store)  # chain checked from the catalog's anchor
        if group > 1 and manifests:
            prefetch = Prefetch(fetcher, manifests)
        for manifest in manifests:
            try:
                rows = _verify(fetcher, manifest, report, prefetch)
            except AuditError:
                commit_pending()  # the manifests before the refused one stay published
                raise
            pending.append((manifest, rows))
            if len(pending) >= group:
                commit_pending()
        commit_pending()
    finally:
        if prefetch is not None:
            prefetch.close()
        fetcher.close()
    report.last_seq = _last_published(con)


def publish_catalog(
    catalog: Catalog | str | None = None,
    archive_uri: str | None = None,
    *,
    store: ObjectStore | None = None,
    rebuild: bool = False,
) -> PublishReport:
    """Publish every committed manifest not yet in the catalog (`rebuild`: recreate a file
    catalog from the manifests alone). Defaults come from SPINE_AUDIT_CATALOG and
    SPINE_ARCHIVE_URI. Raises CatalogError / IngestError (one line) on a tampered or
    missing file, a broken chain or an unreachable catalog; what was published before
    stays published."""
    settings = Settings.from_env()
    if not isinstance(catalog, Catalog):
        parsed = catalog_from_settings(catalog)
        if parsed is None:
            raise CatalogError("SPINE_AUDIT_CATALOG is not set: no DuckLake catalog to publish")
        catalog = parsed
    archive_uri = archive_uri or settings.archive_uri
    store = store or open_store(archive_uri)
    started = time.perf_counter()
    report = PublishReport(catalog=catalog.shown)
    data_path = catalog.data_path(settings.audit_db)
    s3 = _needs_s3(store, archive_uri)
    try:
        if catalog.is_postgres:
            if rebuild:
                raise CatalogError(
                    "a Postgres catalog is not rebuilt in place: drop its metadata schema "
                    "and publish again"
                )
            con = open_connection(catalog, s3=s3)
            try:
                _attach_creating(con, catalog, data_path)
                _set_inlining(con)
                _publish_manifests(con, store, report)
            finally:
                con.close()
        else:
            paths = paths_for(catalog.path)
            con = open_connection(catalog, s3=s3)
            try:
                with writer_lock(paths):
                    published_seq = 0 if rebuild else _published_seq(con, catalog, paths.published)
                    spare, _how = prepare_spare(paths, fresh=rebuild)
                    attach(con, catalog, read_only=False, path=spare, data_path=data_path)
                    _set_inlining(con)
                    refused: AuditError | None = None
                    try:
                        _publish_manifests(
                            con, store, report, published_seq, REBUILD_GROUP if rebuild else 1
                        )
                    except AuditError as exc:  # the manifests before it are still published
                        refused = exc
                    con.execute("USE memory")
                    con.execute(f"DETACH {ALIAS}")
                    publish(paths)
                    if refused is not None:
                        raise refused
            finally:
                con.close()
    except IngestError as exc:
        raise CatalogError(f"not published to the catalog: {exc}") from None
    except duckdb.Error as exc:
        raise CatalogError(
            f"DuckLake catalog {catalog.shown}: {_first_line(exc, catalog)}"
        ) from None
    report.seconds = time.perf_counter() - started
    return report


def _attach_creating(con: duckdb.DuckDBPyConnection, catalog: Catalog, data_path: str) -> None:
    """Attach a Postgres catalog read-write. The first attach creates DuckLake's metadata
    tables; two publishers doing that at once collide in Postgres (the loser's CREATE TABLE
    fails), so the loser attaches again, to tables that now exist."""
    for attempt in range(MAX_ATTEMPTS):
        try:
            attach(con, catalog, read_only=False, data_path=data_path)
            return
        except CatalogError as exc:
            text = str(exc)
            racing = "duplicate key" in text or "already exists" in text
            if not racing or attempt == MAX_ATTEMPTS - 1:
                raise
            with contextlib.suppress(duckdb.Error):
                con.execute(f"DETACH {ALIAS}")
            time.sleep(0.2 * (attempt + 1))


def _published_seq(con: duckdb.DuckDBPyConnection, catalog: Catalog, published: Path) -> int:
    """The last manifest readers of a catalog file see now (0 without one): what a reused
    spare re-publishes is not new to them. Attached read-only and detached again, so the
    writer's own handle never keeps a file from being reused."""
    if not published.exists():
        return 0
    try:
        attach(con, catalog, path=published)
    except CatalogError:
        return 0
    try:
        row = con.execute(f"SELECT coalesce(max(seq), 0) FROM {ALIAS}.manifests").fetchone()
    except duckdb.Error:
        return 0
    finally:
        con.execute(f"DETACH {ALIAS}")
    return int(row[0]) if row else 0


def _set_inlining(con: duckdb.DuckDBPyConnection) -> None:
    """Keep the catalog's own small rows in the metadata database (set once; no snapshot
    when unchanged)."""
    row = con.execute(
        f"SELECT value FROM {ALIAS}.options() WHERE option_name = 'data_inlining_row_limit'"
    ).fetchone()
    if row is None or str(row[0]) != str(INLINING_ROW_LIMIT):
        con.execute(f"CALL {ALIAS}.set_option('data_inlining_row_limit', {INLINING_ROW_LIMIT})")


def publish_if_configured(
    archive_uri: str | None = None, *, store: ObjectStore | None = None
) -> PublishReport | None:
    """`publish_catalog` when SPINE_AUDIT_CATALOG is set (the refresh's second step)."""
    catalog = catalog_from_settings()
    if catalog is None:
        return None
    return publish_catalog(catalog, archive_uri, store=store)
