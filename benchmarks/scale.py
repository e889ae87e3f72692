"""Benchmark 8 (`make bench-scale`, not in `make bench` nor CI): 1,000,000 runs, 10,000,000 blocks.

The same synthetic archive as the audit benchmark's, ten times larger (`audit_scale._archive`:
`benchmarks/synth.py` through the real writer, cached under `.bench/audit/`; generating it
takes about 40 minutes here, so it is made once and reused). One pass, sized to finish in
under an hour on 2 cores:

- `rebuild_audit_db` once (one sample: it is the expensive step), the audit database's size
  against the archive's;
- the credit report by template and the phrase search, medians of `reps` calls in a row
  after a warm-up call (the library keeps the snapshot attached between them), the credit
  report also with the snapshot closed before every call, and a two-word search (reported);
- the DuckLake catalog beside the DuckDB file (`ducklake.publish_all` and
  `ducklake.ingest_and_query`): publishing the whole archive to a new catalog (`audit
  publish --rebuild`); then six new 100-run manifests, each ingested into both, interleaved
  (`refresh_audit_db` is the one-manifest refresh figure; the first of each is the warm-up,
  and the manifests are removed afterwards); the credit report and the phrase search both
  ways;
- `verify_archive(store)`, the `spine-pipeline verify` command's library call (chain, every
  file's sha256), once.

Every phase saves the result so far (`.bench/results/scale.json`), so an interrupted run
keeps its figures. `SPINE_BENCH_SCALE_RUNS` sets another size (for trying it out; the rows
say the size).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import synth
from benchmarks.audit_scale import (
    BLOCKS_PER_RUN,
    WORDS_QUERY,
    _timed,
    prepare,
)
from benchmarks.common import Result, Row, median, say
from benchmarks.ducklake import ingest_and_query, publish_all
from spine_pipeline.archive.stores import open_store
from spine_pipeline.archive.verify import verify_archive
from spine_pipeline.audit import credit_report, rebuild_audit_db, search
from spine_pipeline.audit.duck import REGISTRY
from spine_pipeline.audit.ducklake import Catalog

RUNS = 1_000_000
RUNS_ENV = "SPINE_BENCH_SCALE_RUNS"
#: Targets of issue 20 at this size.
REFRESH_TARGET_S = 2.0
CREDITS_TARGET_S = 0.1
SEARCH_TARGET_S = 0.5
#: Adds a row: name, samples, target text, limit (None: reported only).
RowFn = Callable[[str, list[float], str, float | None], None]


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def run(reps: int = 5, quick: bool = False) -> Result:
    result = Result("scale")
    runs = int(os.environ.get(RUNS_ENV) or (5_000 if quick else RUNS))
    archive, work, db = prepare("scale", runs, result)
    base_manifests = runs // 100
    uri = str(archive)
    size = f"{runs:,} runs"
    archive_bytes = _tree_bytes(archive)
    result.facts.update(
        {
            "runs": runs,
            "blocks": runs * BLOCKS_PER_RUN,
            "manifests": base_manifests,
            "archive_bytes": archive_bytes,
            "load_average_at_start": os.getloadavg()[0],
        }
    )

    def row(name: str, samples: list[float], target: str, limit: float | None = None) -> None:
        value = median(samples)
        result.rows.append(
            Row(
                "scale",
                name,
                value,
                target=target,
                met=None if limit is None else value <= limit,
                runs=len(samples),
                samples=samples,
            )
        )
        result.save()
        say(f"scale: {name}: {value:.3f} s")

    say(f"scale: rebuild the audit database from {base_manifests:,} manifests (once)")
    rebuilt = _timed(lambda: rebuild_audit_db(uri, db))
    db_bytes = db.stat().st_size
    result.facts["db_bytes"] = db_bytes
    result.facts["db_to_archive"] = round(db_bytes / archive_bytes, 2)
    row(
        f"audit rebuild, {size} / {runs * BLOCKS_PER_RUN:,} blocks (one sample)",
        [rebuilt],
        "reported (< 60 min for the whole pass)",
    )

    _queries(db, size, reps, row)

    catalog = Catalog(f"ducklake:{work / 'meta.ducklake'}")
    published = publish_all(catalog, archive, base_manifests, result)
    row(
        f"DuckLake catalog: publish the whole archive (audit publish --rebuild), {size} "
        "(one sample)",
        [published],
        "reported",
    )
    result.facts["catalog_to_db"] = round(catalog.path.stat().st_size / db_bytes, 4)
    # The audit refresh is measured here, interleaved with the catalog's ingest of the same
    # new manifest (`ducklake.ingest_and_query`): measured apart first, the removed
    # increments would be missing from the archive for the audit database that took them.
    _, increments = ingest_and_query(catalog, archive, db, base_manifests, runs, reps, result)
    row(
        f"incremental ingest of one 100-run manifest (audit refresh) at {size}",
        increments,
        f"<= {REFRESH_TARGET_S:g} s",
        REFRESH_TARGET_S,
    )
    say("scale: verify the archive (chain and every file's sha256), once")
    verified = []
    start = time.perf_counter()
    report = verify_archive(open_store(uri))
    verified.append(time.perf_counter() - start)
    if not report.ok:
        raise RuntimeError(f"verify found problems: {report.problems[:3]}")
    result.facts["verify_files"] = report.files
    result.facts["verify_bytes_hashed"] = report.bytes_hashed
    row(f"verify, {base_manifests:,} manifests, no keys (one sample)", verified, "reported")

    result.facts["load_average_at_end"] = os.getloadavg()[0]
    shutil.rmtree(work)  # about 2.5x the archive (the database, its spare, the catalog)
    return result


def _queries(db: Path, size: str, reps: int, row: RowFn) -> None:
    """The auditor's two questions against the rebuilt database, `reps` calls in a row after
    a warm-up call; the credit report also with the snapshot closed before every call."""
    phrase = f'"{synth.PHRASE}"'

    def cold_credits() -> object:
        REGISTRY.close_idle()
        return credit_report(db, by="template")

    cases = [
        (
            f"report credits --by template at {size}",
            lambda: credit_report(db, by="template"),
            f"<= {CREDITS_TARGET_S:g} s",
            CREDITS_TARGET_S,
        ),
        (
            f"search {phrase} at {size}",
            lambda: search(db, phrase),
            f"<= {SEARCH_TARGET_S:g} s",
            SEARCH_TARGET_S,
        ),
        (
            f"report credits --by template, snapshot not kept open, at {size}",
            cold_credits,
            "reported",
            None,
        ),
        (
            f"search {WORDS_QUERY!r} (two common words, no phrase) at {size}",
            lambda: search(db, WORDS_QUERY),
            "reported",
            None,
        ),
    ]
    for name, fn, target, limit in cases:
        _timed(fn)  # the first call attaches the snapshot
        row(name, [_timed(fn) for _ in range(reps)], target, limit)


__all__ = ["run"]
