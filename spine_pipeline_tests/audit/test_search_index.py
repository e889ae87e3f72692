"""The search index's bookkeeping and every search strategy against one oracle.

The oracle is the search as it was before the index kept df/corpus statistics and row
pointers: BM25 computed from all postings, every hit's text fetched by key, the phrase
checked in Python. Each strategy of `search` (rarest-term postings, verbatim scan, row
pointers, key joins, the old layout) must return exactly what it returns. A small archive
with hand-written texts covers the phrase edge cases (% and _, case, non-ASCII, kinds).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from spine_pipeline.archive.archiver import Archiver
from spine_pipeline.archive.ledger import Ledger, Submission
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.records import FetchedRun, RawDoc
from spine_pipeline.archive.stores import open_store
from spine_pipeline.audit import AuditError, rebuild_audit_db, refresh_audit_db, search
from spine_pipeline.audit.ddl import run_facts_select
from spine_pipeline.audit.duck import REGISTRY, load_extension, reading
from spine_pipeline_tests.audit.conftest import World

S = importlib.import_module("spine_pipeline.audit.search")
ingest = importlib.import_module("spine_pipeline.audit.ingest")

# ----------------------------------------------------------------------------- the oracle

_ORACLE_HITS = """
WITH p AS (SELECT term, doc_id, tf FROM search_postings WHERE term IN ({terms})),
df AS (SELECT term, count(*) AS df FROM p GROUP BY term),
st AS (SELECT count(*) AS n, avg(len) AS avgdl FROM search_docs),
scored AS (
  SELECT p.doc_id,
    sum(ln(1 + (st.n - df.df + 0.5) / (df.df + 0.5))
        * p.tf * ($k1 + 1) / (p.tf + $k1 * (1 - $b + $b * d.len / st.avgdl))) AS score,
    count(*) AS matched
  FROM p JOIN df USING (term) JOIN search_docs d USING (doc_id) CROSS JOIN st
  GROUP BY p.doc_id
)
SELECT d.doc_id, d.kind, d.run_id, d.block_id, d.block_ordinal, d.source_idx, d.block_type,
  d.dt, s.score
FROM scored s JOIN search_docs d USING (doc_id)
WHERE s.matched = $nterms
  AND ($type IS NULL OR d.block_type = $type OR d.kind = $type)
  AND ($since IS NULL OR d.dt >= $since)
"""

_ORACLE_TEXT = """
SELECT CASE $kind WHEN 'block' THEN (SELECT content FROM blocks
    WHERE run_id = $run AND ordinal = $ord)
  WHEN 'final_output' THEN (SELECT final_output FROM runs WHERE run_id = $run)
  ELSE (SELECT title FROM block_sources WHERE run_id = $run AND block_ordinal = $ord
    AND idx = $idx) END,
  (SELECT name FROM blocks WHERE run_id = $run AND ordinal = $ord),
  (SELECT canvas_url FROM runs WHERE run_id = $run)
"""


def oracle(
    db: Path, text: str, block_type: str | None = None, since: date | None = None, limit: int = 20
) -> list[tuple[Any, ...]]:
    """What search returned before: all of it computed the slow, obvious way."""
    phrase = S._phrase(text)
    terms = S.query_terms(text)
    if not terms:
        raise AuditError("nothing to search for")
    with reading(db) as con:
        hits = con.execute(
            _ORACLE_HITS.format(terms=", ".join(str(t) for t in terms)),
            {"nterms": len(terms), "type": block_type, "since": since, "k1": S.K1, "b": S.B},
        ).fetchall()
        # Scores equal up to float rounding tie-break like equal scores (see _key).
        hits.sort(key=lambda h: (-round(h[8], 9), h[2], _nulls_first(h[4]), _nulls_first(h[5])))
        words = [phrase or "", *text.replace('"', " ").split()]
        out = []
        for _, kind, run_id, block_id, ordinal, idx, btype, day, score in hits:
            body, name, url = con.execute(
                _ORACLE_TEXT, {"kind": kind, "run": run_id, "ord": ordinal, "idx": idx}
            ).fetchone() or (None, None, None)
            if phrase and phrase.lower() not in (body or "").lower():
                continue
            out.append(
                (run_id, kind, block_id, name, btype, round(float(score), 4),
                 S.snippet(body, words), url, day)
            )  # fmt: skip
            if len(out) >= limit:
                break
    return out


def _nulls_first(v: int | None) -> int:
    return -1 if v is None else v


def _key(hit: tuple[Any, ...]) -> tuple[Any, ...]:
    """Order of hits with ties normalised: the old query tie-broke scores that differ only
    in the last bit by summation order (it varied between runs); the new one sums in a fixed
    order. Equal sets with equal rounded scores in this order are the same answer."""
    return (-hit[5], hit[0], hit[1], hit[2] or "")


def found(db: Path, text: str, **kw: Any) -> list[tuple[Any, ...]]:
    return [dataclasses.astuple(h) for h in search(db, text, **kw)]


def same(db: Path, text: str, **kw: Any) -> list[tuple[Any, ...]]:
    """search == oracle (tie-normalised); returns the hits."""
    got, want = found(db, text, **kw), oracle(db, text, **kw)
    assert sorted(got, key=_key) == sorted(want, key=_key), text
    assert [h[5] for h in got] == sorted((h[5] for h in got), reverse=True)
    return got


STRATEGIES = {
    "default": {},
    "scan": {"SCAN_ABOVE_DF": 0},  # every phrase query finds candidates by scanning texts
    "keys": {"POINTER_BATCH": 0},  # texts always by key join
    "one-pointer-round": {"POINTER_BATCH": 2, "POINTER_ROUNDS": 1},
}


@pytest.fixture(params=list(STRATEGIES))
def strategy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in STRATEGIES[request.param].items():
        monkeypatch.setattr(S, name, value)
    return str(request.param)


# ----------------------------------------------------------------------------- a tiny archive

DAY = datetime(2026, 3, 2, 12, tzinfo=UTC)


def _doc(rng_id: int) -> str:
    return str(uuid.UUID(int=rng_id, version=4))


def fetched_run(
    n: int,
    blocks: list[tuple[str, str]],  # (type, content)
    final_output: str | None = None,
    titles: list[str] = (),  # type: ignore[assignment]
    day: datetime = DAY,
    request_name: str | None = "edge-cases",
) -> FetchedRun:
    """A run as the fetcher hands it to the archive writer (the JSON Spine would send)."""
    run_id = _doc(10_000 + n)
    canvas_id = _doc(20_000 + n)
    nodes = [
        {
            "id": _doc(30_000 + 100 * n + i),
            "name": f"Block {n}.{i}",
            "type": btype,
            "status": "completed",
            "content": content,
            "url": None,
            "sources": [{"url": f"https://src{n}.example.org/{i}", "title": t} for t in titles]
            if i == 0
            else [],
        }
        for i, (btype, content) in enumerate(blocks)
    ]
    run: dict[str, Any] = {
        "run_id": run_id,
        "status": "completed",
        "canvas_id": canvas_id,
        "duration_ms": 600_000,
        "metadata": {"template_used": "report", "models_used": ["m"], "credits_consumed": 10},
        "prompt": f"edge case {n}",
        "template": "report",
    }
    if final_output is not None:
        run["result"] = {"final_output": final_output, "artifacts": []}
    dag = {"canvas_id": canvas_id, "canvas_name": "x", "nodes": nodes, "edges": []}
    tasks = {"canvas_id": canvas_id, "completed": [], "not_completed": []}
    return FetchedRun(
        run_id=run_id,
        run=RawDoc.parse(json.dumps(run)),
        dag=RawDoc.parse(json.dumps(dag)),
        tasks=RawDoc.parse(json.dumps(tasks)),
        artifacts=[],
        fetch_errors=[],
        request_name=request_name,
        submitted_at=day - timedelta(minutes=10),
        terminal_at=day,
    )


def write_batch(uri: str, runs: list[FetchedRun]) -> None:
    """Commit `runs` as one archive batch through the real writer."""
    store = open_store(uri)
    archiver = Archiver(store, lambda: None)  # type: ignore[arg-type, return-value]
    archiver.log = ManifestLog(store)
    archiver.log.refresh()
    assert archiver._write_and_commit(runs, {}) is not None


EDGE_RUNS = [
    fetched_run(
        1,
        [
            ("text-block", "Growth of 50% in Q3 beat the rate_limit again."),
            ("text-block", "Growth of 50x in Q3 beat the ratexlimit again."),
        ],
        final_output="The GROSS MARGIN in Japan fell; gross margin in japan is the headline.",
        titles=["Gross margin in Japan, quarterly", "Unrelated title"],
    ),
    fetched_run(
        2,
        [
            ("web-block", "Die Straße nach İstanbul: gross margin in JAPAN widened."),
            ("table-block", "STRASSE and Istanbul margins; margin in Japan gross."),
        ],
        final_output=None,
        titles=["gross margin in japan (PDF)"],
        day=DAY + timedelta(days=3),
    ),
    fetched_run(
        3,
        [("document-block", "Kelvin scale \u212aelvin; naïve café gross margin in Japan")],
        final_output="Nothing to see: margin, Japan, gross (in that order).",
        day=DAY + timedelta(days=5),
        request_name=None,
    ),
]


@pytest.fixture(scope="module")
def edge_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("edge")
    uri = str(base / "archive")
    write_batch(uri, EDGE_RUNS[:2])
    write_batch(uri, EDGE_RUNS[2:])
    db = base / "audit.duckdb"
    refresh_audit_db(uri, db)
    return db


def test_phrase_with_like_wildcards_is_literal(edge_db: Path, strategy: str) -> None:
    pct = same(edge_db, '"of 50% in"')
    assert [h[2] for h in pct] == [_doc(30_100)]  # not the "50x" block
    assert same(edge_db, '"50_ in q3"') == []  # _ is not a wildcard
    under = same(edge_db, '"the rate_limit"')
    assert [h[2] for h in under] == [_doc(30_100)]


def test_phrase_is_case_insensitive_across_kinds(edge_db: Path, strategy: str) -> None:
    hits = same(edge_db, '"gross margin in japan"', limit=50)
    kinds = {(h[0], h[1]) for h in hits}
    r1, r2, r3 = (_doc(10_000 + n) for n in (1, 2, 3))
    assert kinds == {
        (r1, "final_output"),
        (r1, "source_title"),
        (r2, "block"),
        (r2, "source_title"),
        (r3, "block"),
    }
    # The reordered words of run 3's final output and run 2's table block do not count.
    assert (r3, "final_output") not in kinds
    finals = same(edge_db, '"GROSS margin in Japan"', block_type="final_output")
    assert [(h[0], h[1]) for h in finals] == [(r1, "final_output")]
    titles = same(edge_db, '"gross margin in japan"', block_type="source_title")
    assert {h[0] for h in titles} == {r1, r2} and {h[1] for h in titles} == {"source_title"}
    assert titles[0][3] is not None  # a source title shows its block's name
    typed = same(edge_db, '"gross margin in japan"', block_type="web-block")
    assert [(h[0], h[4]) for h in typed] == [(r2, "web-block"), (r2, "web-block")]
    recent = same(edge_db, '"gross margin in japan"', since=(DAY + timedelta(days=3)).date())
    assert {h[0] for h in recent} == {r2, r3}
    assert same(edge_db, '"gross margin in japan"', since=date(2100, 1, 1)) == []
    assert same(edge_db, 'headline "gross margin in japan"') == [
        h for h in found(edge_db, '"gross margin in japan" headline')
    ]


def test_non_ascii_phrases_follow_python_lower(edge_db: Path, strategy: str) -> None:
    r2, r3 = _doc(10_002), _doc(10_003)
    # "İ".lower() is "i̇" (two characters) in Python: "istanbul" is not in it.
    assert same(edge_db, '"nach istanbul"') == []
    assert [h[0] for h in same(edge_db, '"nach İstanbul"')] == [r2]
    # "STRASSE".lower() is not "straße"; the other block has it verbatim.
    assert [h[2] for h in same(edge_db, '"die straße"')] == [_doc(30_200)]
    # The Kelvin sign lower-cases to an ASCII k in both.
    assert [h[0] for h in same(edge_db, '"scale kelvin"')] == [r3]
    assert [h[0] for h in same(edge_db, '"naïve café"')] == [r3]


def test_every_strategy_matches_the_oracle_on_the_world(world: World, strategy: str) -> None:
    texts = [
        '"solar panel"',
        "solar panel",
        "coffee futures",
        '"battery regulation"',
        "regulation",
        '"the and supply"',
    ]
    for text in texts:
        for kw in ({}, {"limit": 3}, {"block_type": "final_output"}, {"limit": 200}):
            same(world.db, text, **kw)
    with pytest.raises(AuditError):
        search(world.db, '"the and of"')


# ----------------------------------------------------------------------------- bookkeeping


def _bookkeeping(db: Path) -> dict[str, Any]:
    """The maintained tables next to what they must equal, computed from scratch."""
    with reading(db) as con:

        def q(sql: str) -> list[tuple[Any, ...]]:
            return con.execute(sql).fetchall()

        return {
            "df": q("SELECT term, df FROM search_terms ORDER BY term"),
            "df_expected": q(
                "SELECT term, count(*) FROM search_postings GROUP BY term ORDER BY term"
            ),
            "stats": q("SELECT docs, total_len FROM search_stats"),
            "stats_expected": q("SELECT count(*), sum(len) FROM search_docs"),
            "bad_pointers": q(
                """SELECT count(*) FROM search_docs d
LEFT JOIN blocks b ON b.rowid = d.block_row
LEFT JOIN runs r ON d.kind = 'final_output' AND r.rowid = d.text_row
LEFT JOIN block_sources s ON d.kind = 'source_title' AND s.rowid = d.text_row
WHERE d.text_row IS NULL
  OR (d.kind = 'block' AND (d.text_row <> d.block_row OR b.run_id IS DISTINCT FROM d.run_id
      OR b.ordinal IS DISTINCT FROM d.block_ordinal))
  OR (d.kind = 'final_output' AND r.run_id IS DISTINCT FROM d.run_id)
  OR (d.kind = 'source_title' AND (s.run_id IS DISTINCT FROM d.run_id
      OR s.block_ordinal IS DISTINCT FROM d.block_ordinal OR s.idx IS DISTINCT FROM d.source_idx
      OR (d.block_row IS NOT NULL AND b.ordinal IS DISTINCT FROM d.block_ordinal)))"""
            ),
            "facts": q("SELECT * FROM run_facts_stored ORDER BY run_id"),
            "facts_expected": q(f"SELECT * FROM ({run_facts_select()}) ORDER BY run_id"),
            "docs": q(
                "SELECT kind, run_id, block_ordinal, source_idx, len FROM search_docs ORDER BY ALL"
            ),
        }


def _check(book: dict[str, Any]) -> None:
    assert book["df"] == book["df_expected"] and book["df"]
    assert book["stats"] == book["stats_expected"]
    assert book["bad_pointers"] == [(0,)]
    assert book["facts"] == book["facts_expected"] and book["facts"]


def test_refreshes_and_rebuild_keep_the_index_exact(
    world: World, archive_copy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, db = archive_copy()
    refresh_audit_db(uri, db)
    rebuild_audit_db(uri, db)  # clusters the postings; the df table must not move
    after_rebuild = _bookkeeping(db)
    _check(after_rebuild)
    # Three refreshes after the rebuild: copied spare, then reused (blue/green) spares.
    for n in range(3):
        write_batch(uri, [fetched_run(100 + n, [("text-block", f"gross margin {n} in Japan")])])
        refresh_audit_db(uri, db)
        _check(_bookkeeping(db))
    refreshed = _bookkeeping(db)
    assert refreshed["df"] != after_rebuild["df"]
    queries = ['"gross margin"', "margin japan", "solar panel", '"coffee futures"']
    before = {q: found(db, q, limit=100) for q in queries}
    # A rebuild of the same archive equals the refreshed database, also when it ingests
    # the five manifests in several transactions (groups of 2, 2 and 1).
    # The rebuild inserts a group's files one statement per table, flushing early past
    # PENDING_BYTES (1: every file on its own) and prefetching past LOOKAHEAD_BYTES.
    monkeypatch.setattr(ingest, "BULK_GROUP", 2)
    for limit in (ingest.PENDING_BYTES, 1):
        monkeypatch.setattr(ingest, "PENDING_BYTES", limit)
        monkeypatch.setattr(ingest, "LOOKAHEAD_BYTES", limit)
        fresh = tmp_path / f"rebuilt-{limit}.duckdb"
        assert rebuild_audit_db(uri, fresh).manifests == [1, 2, 3, 4, 5]
        rebuilt = _bookkeeping(fresh)
        _check(rebuilt)
        for k in ("df", "stats", "facts", "docs"):
            assert rebuilt[k] == refreshed[k], k
        for q in queries:
            assert sorted(found(fresh, q, limit=100), key=_key) == sorted(before[q], key=_key)
            same(db, q, limit=100)


def test_submission_after_archive_updates_run_facts(tmp_path: Path) -> None:
    uri, db = str(tmp_path / "archive"), tmp_path / "audit.duckdb"
    run = fetched_run(7, [("text-block", "late ledger")], request_name=None)
    write_batch(uri, [run])
    refresh_audit_db(uri, db)

    def fact() -> tuple[Any, ...]:
        with reading(db) as con:
            return (
                con.execute(
                    "SELECT request_name, template FROM run_facts WHERE run_id = ?", [run.run_id]
                ).fetchone()
                or ()
            )

    assert fact() == (None, "report")
    Ledger(open_store(uri)).record_submission(
        Submission(
            request_name="late-request",
            run_id=run.run_id,
            submitted_at=DAY.isoformat(),
            outcome="accepted",
            template="slides",
        )
    )
    refresh_audit_db(uri, db)  # copied spare
    assert fact() == ("late-request", "report")  # the run's own template wins
    refresh_audit_db(uri, db)  # reused spare: adopts the submission from the snapshot
    assert fact() == ("late-request", "report")
    _check(_bookkeeping(db))
    rebuild_audit_db(uri, db)
    assert fact() == ("late-request", "report")


def _downgrade(db: Path) -> None:
    """Turn a database into the layout before search_terms/stats/pointers/run_facts_stored."""
    REGISTRY.close_idle()  # DuckDB refuses a read-write open of a file this process attached
    con = duckdb.connect(str(db))
    try:
        load_extension(con, "fts")
        con.execute("DROP TABLE search_terms")
        con.execute("DROP TABLE search_stats")
        con.execute("ALTER TABLE search_docs DROP COLUMN text_row")
        con.execute("ALTER TABLE search_docs DROP COLUMN block_row")
        con.execute(f"CREATE OR REPLACE VIEW run_facts AS {run_facts_select()}")
        con.execute("DROP TABLE run_facts_stored")
        con.execute("CHECKPOINT")
    finally:
        con.close()


def test_an_old_database_is_searched_then_migrated(world: World, archive_copy: Any) -> None:
    uri, db = archive_copy()
    refresh_audit_db(uri, db)
    queries = ['"solar panel"', "coffee futures", "regulation"]
    current = {q: found(db, q, limit=100) for q in queries}
    _downgrade(db)
    for q in queries:  # readers of a not-yet-migrated snapshot still get the same answers
        assert sorted(found(db, q, limit=100), key=_key) == sorted(current[q], key=_key)
    report = refresh_audit_db(uri, db)  # migrates on open (copies the snapshot first)
    assert report.manifests == []
    _check(_bookkeeping(db))
    for q in queries:
        assert sorted(found(db, q, limit=100), key=_key) == sorted(current[q], key=_key)
