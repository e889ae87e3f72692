"""The DuckLake catalog (issue 18): the archive's manifests published, read by other processes.

Real archives written by the real Archiver from the simulator, on disk and on S3 (`kit`);
the catalog is a local DuckLake file (`ducklake:/.../meta.ducklake`). Readers are separate
Python processes that only know DuckDB, the ducklake extension and the catalog's path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner

from spine_pipeline.archive.arrow_schemas import TABLES
from spine_pipeline.archive.layout import key_dt
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.read import read_committed
from spine_pipeline.audit import ducklake
from spine_pipeline.audit.duck import reading
from spine_pipeline.audit.ducklake import (
    Catalog,
    CatalogError,
    catalog_columns,
    publish_catalog,
)
from spine_pipeline.cli import main
from spine_pipeline.settings import ConfigurationError, Settings
from spine_pipeline_tests.archive.conftest import ArchiveKit
from spine_pipeline_tests.fixtures.insider import plant

pytestmark = pytest.mark.usefixtures("no_log_keys_from_the_environment")


def commit(kit: ArchiveKit, *sizes: int, label: str = "Run") -> list[int]:
    """Archive runs as one manifest per size (submitted together: one wait for all)."""
    total = sum(sizes)
    ids = kit.submit(*[f"{label} {i} about tidal power" for i in range(total)], template="auto")
    seqs = []
    for size in sizes:
        batch, ids = ids[:size], ids[size:]
        result = kit.archiver().archive(batch)
        assert result.ok and result.manifest is not None
        seqs.append(result.manifest.seq)
    return seqs


def catalog_of(tmp_path: Path) -> Catalog:
    return Catalog(f"ducklake:{tmp_path / 'lake' / 'meta.ducklake'}")


READER = textwrap.dedent(
    """
    import json, sys
    import duckdb, duckdb_extensions
    target, s3, queries = sys.argv[1], sys.argv[2] == "1", json.loads(sys.argv[3])
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    duckdb_extensions.import_extension("ducklake", con=con)
    con.execute("LOAD ducklake")
    if s3:
        from spine_pipeline.audit.duck import configure_s3
        configure_s3(con)
    con.execute(f"ATTACH '{target}' AS lake (READ_ONLY)")
    results = []
    for as_of, tables in queries:
        at = ""
        if as_of:
            (version,) = con.execute(
                "SELECT max(snapshot_id) FROM lake.snapshots() WHERE commit_message = ?",
                [f"manifest {as_of}"],
            ).fetchone()
            at = f" AT (VERSION => {version})"
        out = {}
        for table in tables:
            rows = con.execute(
                f"SELECT * EXCLUDE (dt), dt::VARCHAR AS dt FROM lake.{table}{at} ORDER BY ALL"
            ).fetchall()
            out[table] = [[repr(v) for v in r] for r in rows]
        seqs = con.execute(f"SELECT seq FROM lake.manifests{at} ORDER BY 1").fetchall()
        out["manifests"] = [r[0] for r in seqs]
        results.append(out)
    print(json.dumps(results))
    """
)


def read_in_subprocess(
    catalog: Catalog, *queries: tuple[int | None, list[str]], s3: bool
) -> list[dict[str, Any]]:
    """What a separate DuckDB process reads from the catalog (READ_ONLY): per query (as of
    manifest N or now, tables), the rows of each table and the published manifests."""
    proc = subprocess.run(
        [sys.executable, "-c", READER, catalog.value, "1" if s3 else "0", json.dumps(queries)],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr
    result: list[dict[str, Any]] = json.loads(proc.stdout)
    return result


def expected_rows(kit: ArchiveKit, table: str, upto: int | None = None) -> list[list[str]]:
    """The archive's committed rows (exactly the manifest-listed files), as the reader prints
    them: the catalog's columns, dt from the Hive path."""
    log = ManifestLog(kit.store)
    log.refresh()
    cols = [c for c, _ in catalog_columns(table) if c != "dt"]
    parts = []
    for manifest in log:
        if upto is not None and manifest.seq > upto:
            continue
        for f in manifest.files:
            if f.table != table:
                continue
            t = read_committed(kit.store, table, log=_only(log, manifest.seq)).select(cols)
            dt = pa.array([key_dt(f.key)] * t.num_rows, pa.string())
            parts.append(t.append_column("dt", dt))
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if not parts:
        return []
    con.register("t", pa.concat_tables(parts))
    rows = con.execute("SELECT * FROM t ORDER BY ALL").fetchall()
    return [[repr(v) for v in r] for r in rows]


def _only(log: ManifestLog, seq: int) -> Any:
    return [m for m in log if m.seq == seq]


def registered_files(catalog: Catalog) -> list[str]:
    """Every data file the catalog's tables reference."""
    import duckdb
    import duckdb_extensions

    con = duckdb.connect()
    duckdb_extensions.import_extension("ducklake", con=con)
    con.execute("LOAD ducklake")
    con.execute(f"ATTACH '{catalog.value}' AS lake (READ_ONLY)")
    files = []
    for table in TABLES:
        files += [
            r[0]
            for r in con.execute(
                f"SELECT data_file FROM ducklake_list_files('lake', '{table}')"
            ).fetchall()
        ]
    con.close()
    return sorted(files)


# ----------------------------------------------------------------------------- tests


def test_published_catalog_holds_exactly_the_archive_rows_and_travels_in_time(
    kit: ArchiveKit, tmp_path: Path
) -> None:
    catalog = catalog_of(tmp_path)
    first, second = commit(kit, 2, 1)
    report = publish_catalog(catalog, kit.uri)
    assert report.manifests == [first, second] and report.rows["runs"] == 3
    again = publish_catalog(catalog, kit.uri)
    assert again.manifests == [] and again.last_seq == second  # idempotent

    tables = ["runs", "blocks", "tasks"]
    now, then = read_in_subprocess(
        catalog, (None, tables), (first, ["runs"]), s3=kit.uri.startswith("s3://")
    )
    assert now["manifests"] == [first, second]
    for table in tables:
        assert now[table] == expected_rows(kit, table), table
    assert len(now["runs"]) == 3
    assert then["manifests"] == [first]
    assert then["runs"] == expected_rows(kit, "runs", upto=first)
    assert len(then["runs"]) == 2


def test_a_tampered_file_refuses_its_manifest_and_registers_nothing_of_it(
    kit: ArchiveKit, tmp_path: Path
) -> None:
    catalog = catalog_of(tmp_path)
    first, second = commit(kit, 1, 1)
    log = ManifestLog(kit.store)
    log.refresh()
    (kept,) = [m for m in log if m.seq == first]
    files = [f.key for f in kept.files if f.rows]  # DuckLake lists no file without rows
    (manifest,) = [m for m in log if m.seq == second]
    victim = next(f for f in manifest.files if f.table == "blocks")
    plant(kit.uri, victim.key, kit.store.get_bytes(victim.key)[:-8] + b"tampered")

    with pytest.raises(CatalogError) as caught:
        publish_catalog(catalog, kit.uri)
    message = str(caught.value)
    assert "\n" not in message
    assert victim.key in message and "sha256" in message and f"manifest {second}" in message
    assert registered_files(catalog) == sorted(kit.store.url(k) for k in files)
    (seen,) = read_in_subprocess(catalog, (None, ["runs"]), s3=kit.uri.startswith("s3://"))
    assert seen["manifests"] == [first] and len(seen["runs"]) == 1


def test_a_rebuild_commits_manifests_in_groups_and_travels_to_each_group_end(
    kit: ArchiveKit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`publish --rebuild` commits REBUILD_GROUP manifests per snapshot (named after the
    last); as of a manifest inside a group is refused in one line that says how to read it;
    a tampered file refuses its manifest after the ones before it in its group committed."""
    monkeypatch.setattr(ducklake, "REBUILD_GROUP", 2)
    catalog = catalog_of(tmp_path)
    s3 = kit.uri.startswith("s3://")
    one, two, three = commit(kit, 1, 1, 1)
    report = publish_catalog(catalog, kit.uri, rebuild=True)
    assert report.manifests == [one, two, three] and report.rows["runs"] == 3
    with ducklake.reading_catalog(catalog, s3=s3) as con:
        messages = con.execute(
            "SELECT commit_message FROM snapshots() WHERE author = ? ORDER BY snapshot_id",
            [ducklake.AUTHOR],
        ).fetchall()
        assert [m for (m,) in messages if m.startswith("manifest ")] == [
            f"manifest {two}",
            f"manifest {three}",
        ]
        with pytest.raises(CatalogError) as caught:
            ducklake.snapshot_of_manifest(con, one)
    assert "\n" not in str(caught.value) and "batch_id" in str(caught.value)
    with ducklake.reading_catalog(catalog, s3=s3, as_of_manifest=two) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (2,)
    now, then = read_in_subprocess(catalog, (None, ["runs"]), (two, ["runs"]), s3=s3)
    assert now["manifests"] == [one, two, three] and now["runs"] == expected_rows(kit, "runs")
    assert then["manifests"] == [one, two]
    assert then["runs"] == expected_rows(kit, "runs", upto=two)

    log = ManifestLog(kit.store)
    log.refresh()
    (manifest,) = [m for m in log if m.seq == two]
    victim = next(f for f in manifest.files if f.table == "runs")
    plant(kit.uri, victim.key, kit.store.get_bytes(victim.key)[:-8] + b"tampered")
    with pytest.raises(CatalogError) as caught:
        publish_catalog(catalog, kit.uri, rebuild=True)
    assert victim.key in str(caught.value) and f"manifest {two}" in str(caught.value)
    (seen,) = read_in_subprocess(catalog, (None, ["runs"]), s3=s3)
    assert seen["manifests"] == [one] and seen["runs"] == expected_rows(kit, "runs", upto=one)


PUBLISHER = textwrap.dedent(
    """
    import json, sys
    from spine_pipeline.audit.ducklake import publish_catalog
    r = publish_catalog(sys.argv[1], sys.argv[2])
    print(json.dumps({"manifests": r.manifests, "raced": r.raced}))
    """
)


# The race is settled in the catalog, not in the archive's storage: one backend.
@pytest.mark.parametrize("archive_uri", ["local"], indirect=True)
def test_two_racing_publishers_commit_each_manifest_once(kit: ArchiveKit, tmp_path: Path) -> None:
    catalog = catalog_of(tmp_path)
    seqs = commit(kit, 1, 1)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, catalog.value, kit.uri],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    published = sorted(s for r in results for s in r["manifests"])
    assert published == seqs  # each manifest committed by exactly one of them
    (seen,) = read_in_subprocess(catalog, (None, ["runs"]), s3=False)
    assert seen["manifests"] == seqs
    assert seen["runs"] == expected_rows(kit, "runs") and len(seen["runs"]) == 2


@pytest.mark.parametrize("archive_uri", ["local"], indirect=True)
def test_two_transactions_racing_for_one_manifest_commit_it_once(
    kit: ArchiveKit, tmp_path: Path
) -> None:
    """The conflict path a Postgres catalog relies on (two hosts, no lock file): both
    transactions register the manifest and reach COMMIT together; one commits, the other
    conflicts, re-checks and skips it."""
    (seq,) = commit(kit, 1)
    catalog = catalog_of(tmp_path)
    catalog.path.parent.mkdir()
    con = ducklake.open_connection(catalog, s3=False)
    ducklake.attach(con, catalog, read_only=False, data_path=f"{catalog.path}.files/")
    con.execute(f"USE {ducklake.ALIAS}")
    ducklake.ensure_catalog_schema(con)
    barrier = threading.Barrier(2, timeout=60)

    class MeetAtCommit:
        def __init__(self, cur: Any) -> None:
            self.cur, self.met = cur, False

        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "COMMIT" and not self.met:
                self.met = True
                barrier.wait()
            return self.cur.execute(sql, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.cur, name)

    reports = [ducklake.PublishReport("a"), ducklake.PublishReport("b")]
    errors: list[BaseException] = []

    def publisher(report: ducklake.PublishReport) -> None:
        try:
            ducklake._publish_manifests(MeetAtCommit(con.cursor()), kit.store, report)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(r,)) for r in reports]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sorted([r.manifests for r in reports]) == [[], [seq]]
    assert sorted([r.raced for r in reports]) == [[], [seq]]
    (count,) = con.execute("SELECT count(*) FROM manifests").fetchone()
    (runs,) = con.execute("SELECT count(*) FROM runs").fetchone()
    assert (count, runs) == (1, 1)
    con.close()


HOLDER = textwrap.dedent(
    """
    import sys
    import duckdb, duckdb_extensions
    con = duckdb.connect()
    duckdb_extensions.import_extension("ducklake", con=con)
    con.execute("LOAD ducklake")
    con.execute(f"ATTACH '{sys.argv[1]}' AS lake (READ_ONLY)")
    print(con.execute("SELECT count(*) FROM lake.runs").fetchone()[0], flush=True)
    sys.stdin.readline()  # the publish happens now
    print(con.execute("SELECT count(*) FROM lake.runs").fetchone()[0], flush=True)
    """
)


@pytest.mark.parametrize("archive_uri", ["local"], indirect=True)
def test_readers_keep_reading_while_a_publish_commits(kit: ArchiveKit, tmp_path: Path) -> None:
    catalog = catalog_of(tmp_path)
    ids = kit.submit(*[f"Reader {i} about tidal power" for i in range(3)], template="auto")
    first = kit.archiver().archive(ids[:1]).manifest
    assert first is not None
    publish_catalog(catalog, kit.uri)
    reader = subprocess.Popen(
        [sys.executable, "-c", HOLDER, catalog.value],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None and reader.stdin is not None
        assert reader.stdout.readline().strip() == "1"
        second = kit.archiver().archive(ids[1:]).manifest
        assert second is not None
        report = publish_catalog(catalog, kit.uri)  # the reader still holds the catalog open
        assert report.manifests == [second.seq]
        reader.stdin.write("go\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "1"  # its snapshot, undisturbed
    finally:
        _, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    with ducklake.reading_catalog(catalog) as con:  # a new reader sees the new snapshot
        assert con.execute("SELECT list(seq ORDER BY seq) FROM manifests").fetchone() == (
            [first.seq, second.seq],
        )
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (3,)


@pytest.mark.parametrize("archive_uri", ["local"], indirect=True)
def test_audit_refresh_publishes_and_publish_rebuild_recreates(
    kit: ArchiveKit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = catalog_of(tmp_path)
    (seq,) = commit(kit, 2)
    monkeypatch.setenv("SPINE_ARCHIVE_URI", kit.uri)
    monkeypatch.setenv("SPINE_AUDIT_DB", str(tmp_path / "audit.duckdb"))
    monkeypatch.setenv("SPINE_AUDIT_CATALOG", catalog.value)
    result = CliRunner().invoke(main, ["audit", "refresh"])
    assert result.exit_code == 0, result.output
    assert f"published 1 manifest(s) (last seq {seq})" in result.output
    result = CliRunner().invoke(main, ["audit", "publish", "--rebuild"])
    assert result.exit_code == 0, result.output
    assert f"published 1 manifest(s) (last seq {seq})" in result.output
    # The catalog's report views answer as the audit database's do (same DDL text).
    for view in ("credit_usage_by_template", "credit_usage_by_model", "run_outcomes"):
        sql = f"SELECT * FROM {view} ORDER BY ALL"
        with ducklake.reading_catalog(catalog) as con:
            lake = con.execute(sql).fetchall()
        with reading(tmp_path / "audit.duckdb") as con:
            audit = con.execute(sql).fetchall()
        assert lake == audit and lake, view


@pytest.mark.parametrize(
    "raw",
    [
        "postgres:dbname=audit password=hunter2",
        "ducklake:sqlite:/srv/meta.sqlite",
        "ducklake:",
        "ducklake:postgres:",
        "ducklake:s3://bucket/meta.ducklake",
        "ducklake:/srv/meta\x07.ducklake",
    ],
)
def test_a_bad_catalog_setting_is_one_line_without_the_value(raw: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"SPINE_AUDIT_CATALOG": raw})
    message = str(caught.value)
    assert message.startswith("SPINE_AUDIT_CATALOG") and "\n" not in message
    assert "hunter2" not in message and message.endswith("; value not shown")


def test_a_postgres_catalog_that_cannot_be_reached_is_one_line_without_its_password(
    tmp_path: Path,
) -> None:
    value = "ducklake:postgres:dbname=audit host=127.0.0.1 port=1 user=x password=hunter2"
    settings = Settings.from_env({"SPINE_AUDIT_CATALOG": value})
    assert settings.audit_catalog == value
    assert "hunter2" not in repr(settings) and "hunter2" not in repr(Catalog(value))
    with pytest.raises(CatalogError) as caught:
        publish_catalog(value, str(tmp_path / "archive"))
    message = str(caught.value)
    assert "\n" not in message and "hunter2" not in message and "ducklake:postgres:" in message


def test_audit_publish_without_a_catalog_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPINE_AUDIT_CATALOG", raising=False)
    monkeypatch.setenv("SPINE_ARCHIVE_URI", str(tmp_path / "archive"))
    result = CliRunner().invoke(main, ["audit", "publish"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: SPINE_AUDIT_CATALOG is not set: no DuckLake catalog to publish"
    ]
    result = CliRunner().invoke(main, ["audit", "publish", "--catalog", "sqlite:x password=pw"])
    assert result.exit_code == 2 and "pw" not in result.output


@pytest.mark.postgres
def test_a_catalog_in_postgres_holds_exactly_the_archive_rows_and_races_commit_once(
    kit: ArchiveKit, postgres_server: Any, tmp_path: Path
) -> None:
    """`ducklake:postgres:...`: the catalog for many hosts (a real PostgreSQL server)."""
    catalog = Catalog(f"ducklake:postgres:{postgres_server.dsn(postgres_server.create_database())}")
    first, second = commit(kit, 2, 1)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, catalog.value, kit.uri],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in racers]
    assert [p.returncode for p in racers] == [0, 0], [err for _, err in outs]
    again = publish_catalog(catalog, kit.uri)
    assert again.manifests == [] and again.last_seq == second  # each manifest once, no more

    now, then = read_in_subprocess(
        catalog, (None, ["runs", "blocks"]), (first, ["runs"]), s3=kit.uri.startswith("s3://")
    )
    assert now["manifests"] == [first, second]
    assert now["runs"] == expected_rows(kit, "runs") and len(now["runs"]) == 3
    assert now["blocks"] == expected_rows(kit, "blocks")
    assert then["runs"] == expected_rows(kit, "runs", upto=first)
    assert postgres_server.password not in repr(catalog) + catalog.shown
