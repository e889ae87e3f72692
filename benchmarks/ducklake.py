"""Benchmark 7: the DuckLake catalog (`SPINE_AUDIT_CATALOG`) beside the audit DuckDB file.

On the audit benchmark's synthetic archive (`benchmarks/synth.py`, cached under
`.bench/audit/`, shared with `audit_scale.py`):

- publishes the whole archive to a new catalog file (`publish_catalog(rebuild=True)`) and
  rebuilds the audit database, once each (facts, not rows: one sample each);
- measures incremental ingest of one new 100-run manifest both ways: `refresh_audit_db`
  (the DuckDB file) against `publish_catalog` (the catalog), interleaved, after a warm-up
  (the first refresh after a rebuild copies the snapshot); the increments are removed
  afterwards, leaving the cache as it was;
- measures the credit report by template and the phrase search both ways: the library
  calls on the audit database against the same questions asked of the catalog with SQL
  (attached READ_ONLY once, as a notebook would; the credit question through the
  catalog's `credit_usage_by_template` view; the phrase as an ILIKE scan of `blocks`,
  since the catalog has no full-text index), and the catalog's credit query with a fresh
  attach per call.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from benchmarks import synth
from benchmarks.audit_scale import (
    BLOCKS_PER_RUN,
    RUNS,
    _archive,
    _drop_increments,
    add_manifests,
)
from benchmarks.common import BENCH_DIR, Result, Row, interleave, median, say
from spine_pipeline.audit import credit_report, rebuild_audit_db, refresh_audit_db, search
from spine_pipeline.audit.ducklake import ALIAS, Catalog, attach, open_connection, publish_catalog

INCREMENTS = 6


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(reps: int = 5, quick: bool = False) -> Result:
    result = Result("ducklake")
    runs = 10_000 if quick else RUNS
    archive = _archive(runs, BLOCKS_PER_RUN, result)
    base_manifests = runs // 100
    _drop_increments(archive, base_manifests)
    work = BENCH_DIR / "scratch" / "ducklake"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    db = work / "audit.duckdb"
    catalog = Catalog(f"ducklake:{work / 'meta.ducklake'}")
    result.facts.update({"runs": runs, "blocks": runs * BLOCKS_PER_RUN})
    publish_all(catalog, archive, base_manifests, result)
    say("ducklake: rebuild the audit database")
    rebuilt = _timed(lambda: rebuild_audit_db(str(archive), db))
    result.facts["audit_rebuild_s"] = round(rebuilt, 1)
    result.facts["audit_db_bytes"] = db.stat().st_size
    ingest_and_query(catalog, archive, db, base_manifests, runs, reps, result)
    return result


def publish_all(catalog: Catalog, archive: Path, base_manifests: int, result: Result) -> float:
    """Publish the whole archive to a new catalog (`audit publish --rebuild`'s call); facts:
    its seconds, per manifest, and the catalog file's size."""
    name = result.benchmark
    say(f"{name}: publish the whole archive to a new catalog")
    published = _timed(lambda: publish_catalog(catalog, str(archive), rebuild=True))
    result.facts["catalog_publish_all_s"] = round(published, 1)
    result.facts["catalog_publish_per_manifest_s"] = round(published / base_manifests, 4)
    result.facts["catalog_bytes"] = catalog.path.stat().st_size
    say(f"{name}: {base_manifests} manifests published in {published:.1f} s")
    return published


def ingest_and_query(
    catalog: Catalog,
    archive: Path,
    db: Path,
    base_manifests: int,
    runs: int,
    reps: int,
    result: Result,
) -> tuple[list[float], list[float]]:
    """One new 100-run manifest at a time into the catalog and the audit database,
    interleaved (first pair a warm-up), then the queries both ways (`_queries`), then the
    new manifests removed again. Returns the seconds of both ingests (catalog, refresh)."""
    name, uri = result.benchmark, str(archive)
    lake, duck = [], []
    try:
        for i in add_manifests(archive, base_manifests, INCREMENTS):
            # Alternate which goes first, so neither always meets a warm page cache.
            if i % 2:
                d = _timed(lambda: refresh_audit_db(uri, db))
                c = _timed(lambda: publish_catalog(catalog, uri))
            else:
                c = _timed(lambda: publish_catalog(catalog, uri))
                d = _timed(lambda: refresh_audit_db(uri, db))
            if i > 0:
                lake.append(c)
                duck.append(d)
            say(f"{name}: one 100-run manifest: catalog {c:.2f} s, audit refresh {d:.2f} s")
        result.rows.append(
            Row(
                name,
                f"ingest of one 100-run manifest into the DuckLake catalog at {runs:,} runs",
                median(lake),
                baseline=median(duck),
                baseline_name="audit refresh (DuckDB file)",
                ratio_kind="overhead",
                target="reported (no target)",
                runs=len(lake),
                samples=lake,
                baseline_samples=duck,
            )
        )
        # Before the increments go: the catalog references their files.
        _queries(catalog, db, runs + INCREMENTS * 100, reps, result)
    finally:
        _drop_increments(archive, base_manifests)
    return lake, duck


CREDITS_SQL = (
    "SELECT template, sum(runs) AS runs, sum(credits) AS credits FROM credit_usage_by_template "
    "GROUP BY template ORDER BY credits DESC"
)
PHRASE_SQL = (
    f"SELECT run_id, block_id, type FROM blocks WHERE content ILIKE '%{synth.PHRASE}%' LIMIT 20"
)


def _queries(catalog: Catalog, db: Path, runs: int, reps: int, result: Result) -> None:
    con = open_connection(catalog, s3=False)
    try:
        attach(con, catalog)
        con.execute(f"USE {ALIAS}")

        def lake(sql: str) -> object:
            return con.execute(sql).fetchall()

        def lake_cold() -> object:
            fresh = open_connection(catalog, s3=False)
            try:
                attach(fresh, catalog)
                return fresh.execute(f"USE {ALIAS}; {CREDITS_SQL}").fetchall()
            finally:
                fresh.close()

        phrase = f'"{synth.PHRASE}"'
        cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
            (
                "report credits --by template",
                partial(lake, CREDITS_SQL),
                lambda: credit_report(db, by="template"),
            ),
            (
                f"search {phrase} (catalog: ILIKE scan, no index)",
                partial(lake, PHRASE_SQL),
                lambda: search(db, phrase),
            ),
        ]
        for name, on_lake, on_duck in cases:
            on_lake()
            on_duck()  # first calls attach / open the snapshot
            measured, baseline = interleave(
                partial(_timed, on_lake), partial(_timed, on_duck), reps
            )
            result.rows.append(
                Row(
                    result.benchmark,
                    f"{name} at {runs:,} runs, DuckLake catalog",
                    median(measured),
                    baseline=median(baseline),
                    baseline_name="audit DuckDB file (library call)",
                    ratio_kind="overhead",
                    target="reported (no target)",
                    runs=reps,
                    samples=measured,
                    baseline_samples=baseline,
                )
            )
            say(
                f"{result.benchmark}: {name}: catalog {median(measured):.3f} s, "
                f"DuckDB file {median(baseline):.3f} s"
            )
        cold = [_timed(lake_cold) for _ in range(reps)]
        result.rows.append(
            Row(
                result.benchmark,
                f"report credits --by template at {runs:,} runs, DuckLake catalog, "
                "attached per call",
                median(cold),
                target="reported (no target)",
                runs=reps,
                samples=cold,
            )
        )
        say(f"{result.benchmark}: credits with a fresh attach: {median(cold):.3f} s")
    finally:
        con.close()


__all__ = ["run"]
