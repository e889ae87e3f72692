"""Full-text search over block content, final outputs and source titles; cited domains.

BM25 (k1 = 1.2, b = 0.75, like DuckDB's fts `match_bm25`) over the incrementally kept
index (`search_docs`, `search_postings`, with `search_terms` holding each term's document
frequency and `search_stats` the corpus size). Every query word must match (after
stemming); text in double quotes must also appear verbatim (case-insensitive), so auditors
can ask for an exact phrase.

How a query runs, so that its cost follows the hits, not the corpus:

1. The query's terms are stemmed in a private in-memory DuckDB that has the fts extension
   (the sandboxed reader does not load it: that was most of the cost of opening it).
2. Ranking reads the index only: the postings of the rarest term, then the other terms'
   postings of just those documents (DuckDB pushes the doc ids into the scan), with df and
   corpus statistics from the small tables.
3. Texts are read only for what is shown or checked: through each document's row pointer
   (a few dozen rows), or by key in one hash join when there are many. A phrase is checked
   in rank order until `limit` documents contain it; an ASCII phrase is pre-filtered in SQL
   (DuckDB's `lower` finds every match Python's does) before the exact Python check.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from datetime import date
from typing import Any

import duckdb

from spine_pipeline.audit.ddl import MACROS
from spine_pipeline.audit.duck import AuditError, load_extension, reading

SNIPPET_CHARS = 160
K1 = 1.2
B = 0.75
# Texts read by row pointer at most this many at a time (DuckDB fetches a few dozen random
# rows in milliseconds, hundreds cost as much as a scan); beyond, one hash join by key.
POINTER_BATCH = 48
# Pointer rounds for a phrase before the remaining candidates are checked in one join.
POINTER_ROUNDS = 2
# A phrase whose rarest term is in more documents than this finds its candidates with one
# verbatim pass over the texts instead of the postings (cheaper there; docs/decisions.md).
SCAN_ABOVE_DF = 50_000


@dataclass(frozen=True)
class SearchHit:
    """One matching document: where it is, a snippet and the canvas link."""

    run_id: str
    kind: str  # block | final_output | source_title
    block_id: str | None
    block_name: str | None
    block_type: str | None
    score: float
    snippet: str
    canvas_url: str | None
    day: date | None


@dataclass(frozen=True)
class CitedSource:
    run_id: str
    block_id: str | None
    block_name: str | None
    block_type: str | None
    url: str | None
    title: str | None
    domain: str | None
    canvas_url: str | None
    day: date | None


@dataclass(frozen=True)
class _Candidate:
    """A ranked candidate, as `search_docs` describes it."""

    doc_id: int
    kind: str
    run_id: str
    block_id: str | None
    block_ordinal: int | None
    source_idx: int | None
    block_type: str | None
    day: date | None
    score: float
    text_row: int | None
    block_row: int | None


# ----------------------------------------------------------------------------- terms

_TOKENIZER_LOCK = threading.Lock()
_tokenizer: duckdb.DuckDBPyConnection | None = None


def query_terms(text: str) -> list[int]:
    """The distinct term hashes of `text`, computed by the index's own macros."""
    global _tokenizer
    with _TOKENIZER_LOCK:
        if _tokenizer is None:
            con = duckdb.connect(":memory:")
            load_extension(con, "fts")
            for ddl in MACROS:
                con.execute(ddl)
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            _tokenizer = con
        row = _tokenizer.execute(
            "SELECT list(DISTINCT audit_term(w)) FROM unnest(audit_words(?)) t(w)", [text]
        ).fetchone()
    return sorted(int(t) for t in (row[0] if row and row[0] else []))


# ----------------------------------------------------------------------------- ranking


def _corpus(
    con: duckdb.DuckDBPyConnection, terms: list[int]
) -> tuple[dict[int, int], int, int, bool]:
    """Document frequency of each term, the number of documents, their total length, and
    whether the index has its row pointers.

    A database not refreshed since the upgrade lacks `search_stats`, `search_terms` and the
    pointers (one migration adds them all); search then counts as it used to.
    """
    lst = ", ".join(str(t) for t in terms)
    try:
        row = con.execute("SELECT docs, total_len FROM search_stats").fetchone()
        dfs = con.execute(f"SELECT term, df FROM search_terms WHERE term IN ({lst})").fetchall()
        pointers = True
    except duckdb.CatalogException:
        row = con.execute("SELECT count(*), coalesce(sum(len), 0) FROM search_docs").fetchone()
        dfs = con.execute(
            f"SELECT term, count(*) FROM search_postings WHERE term IN ({lst}) GROUP BY term"
        ).fetchall()
        pointers = False
    docs, total = row if row else (0, 0)
    return {int(t): int(n) for t, n in dfs}, int(docs), int(total), pointers


# Documents whose text may contain $needle (lower-case ASCII): one pass over the texts.
_PHRASE_DOCS = """SELECT d.doc_id FROM search_docs d JOIN (
    SELECT 'block' AS kind, run_id, ordinal AS o, -1 AS i FROM blocks
    WHERE contains(lower(content), $needle)
    UNION ALL SELECT 'final_output', run_id, -1, -1 FROM runs
    WHERE contains(lower(final_output), $needle)
    UNION ALL SELECT 'source_title', run_id, block_ordinal, idx FROM block_sources
    WHERE contains(lower(title), $needle)
  ) m ON m.kind = d.kind AND m.run_id = d.run_id AND m.o = coalesce(d.block_ordinal, -1)
    AND m.i = coalesce(d.source_idx, -1)"""


def _rank_sql(by_df: list[int], pointers: bool, limit: int | None, scan: bool) -> str:
    """Every document holding all terms, scored, best first.

    Candidates come from the rarest term's postings (the other terms' postings are read
    for those documents only), or with `scan` from one verbatim pass over the texts (when
    every term is common but the phrase may not be). Postings are grouped per document
    first (one tf column per term), so the document table is joined once per candidate.
    Each term's BM25 share is the expression the index always used, added in term order,
    so equal documents score equal bits.
    """
    rare, *others = by_df
    if scan:
        lst = ", ".join(str(t) for t in by_df)
        postings = (
            f"SELECT term, doc_id, tf FROM search_postings WHERE term IN ({lst})"
            f"\n    AND doc_id IN ({_PHRASE_DOCS})"
        )
    else:
        postings = f"SELECT term, doc_id, tf FROM search_postings WHERE term = {rare}"
    if others and not scan:
        lst = ", ".join(str(t) for t in others)
        postings += (
            f"\n  UNION ALL SELECT term, doc_id, tf FROM search_postings WHERE term IN ({lst})"
            f"\n    AND doc_id IN (SELECT doc_id FROM search_postings WHERE term = {rare})"
        )
    ordered = sorted(by_df)
    tfs = ",\n    ".join(
        f"any_value(tf) FILTER (WHERE term = {t}) AS tf{i}" for i, t in enumerate(ordered)
    )
    score = "\n    + ".join(
        f"ln(1 + (st.n - $df{i} + 0.5) / ($df{i} + 0.5)) * g.tf{i} * ($k1 + 1)"
        f" / (g.tf{i} + $k1 * (1 - $b + $b * d.len / st.avgdl))"
        for i in range(len(ordered))
    )
    rows = "d.text_row, d.block_row" if pointers else "NULL::BIGINT, NULL::BIGINT"
    return f"""WITH p AS ({postings}),
g AS (
  SELECT doc_id, count(*) AS matched,
    {tfs}
  FROM p GROUP BY doc_id
),
st AS (SELECT $n::BIGINT AS n, $total::BIGINT / $n::BIGINT AS avgdl)
SELECT d.doc_id, d.kind, d.run_id, d.block_id, d.block_ordinal, d.source_idx, d.block_type,
  d.dt,
    {score} AS score,
  {rows}
FROM g JOIN search_docs d USING (doc_id) CROSS JOIN st
WHERE g.matched = $nterms
  AND ($type IS NULL OR d.block_type = $type OR d.kind = $type)
  AND ($since IS NULL OR d.dt >= $since)
ORDER BY score DESC, d.run_id, d.block_ordinal NULLS FIRST, d.source_idx NULLS FIRST
{"" if limit is None else f"LIMIT {int(limit)}"}"""


def _rank(
    con: duckdb.DuckDBPyConnection,
    terms: list[int],
    block_type: str | None,
    since: date | None,
    limit: int | None,
    needle: str | None = None,
) -> tuple[list[_Candidate], bool]:
    """The ranked candidates, and whether their row pointers can be used.

    `needle` (an ASCII phrase, lower-cased) lets a query whose terms are all common find
    its candidates by scanning the texts instead: a superset of the documents containing
    the phrase, still checked exactly afterwards.
    """
    dfs, docs, total, pointers = _corpus(con, terms)
    if docs == 0 or any(dfs.get(t, 0) == 0 for t in terms):
        return [], pointers  # some term is in no document: nothing holds them all
    by_df = sorted(terms, key=lambda t: (dfs[t], t))
    scan = needle is not None and dfs[by_df[0]] > SCAN_ABOVE_DF
    params: dict[str, Any] = {
        **{f"df{i}": dfs[t] for i, t in enumerate(sorted(terms))},
        "n": docs,
        "total": total,
        "nterms": len(terms),
        "type": block_type,
        "since": since,
        "k1": K1,
        "b": B,
    }
    if scan:
        params["needle"] = needle
    rows = con.execute(_rank_sql(by_df, pointers, limit, scan), params).fetchall()
    return [_Candidate(*r) for r in rows], pointers


# ----------------------------------------------------------------------------- texts

_Texts = dict[int, tuple[str | None, str | None]]  # doc_id -> (text, block name)


def _by_rowid(
    con: duckdb.DuckDBPyConnection, table: str, cols: str, rows: set[int]
) -> dict[int, tuple[Any, ...]]:
    if not rows:
        return {}
    return {
        r[0]: r[1:]
        for r in con.execute(
            f"SELECT rowid, {cols} FROM {table} WHERE rowid = ANY($rows::BIGINT[])",
            {"rows": sorted(rows)},
        ).fetchall()
    }


def _texts_by_pointer(
    con: duckdb.DuckDBPyConnection, docs: list[_Candidate]
) -> tuple[_Texts, list[_Candidate]]:
    """Texts through the row pointers, each row's key checked; the rest need a key join."""
    blocks = _by_rowid(
        con,
        "blocks",
        "run_id, ordinal, content, name",
        {d.block_row for d in docs if d.block_row is not None},
    )
    runs = _by_rowid(
        con,
        "runs",
        "run_id, final_output",
        {d.text_row for d in docs if d.kind == "final_output" and d.text_row is not None},
    )
    sources = _by_rowid(
        con,
        "block_sources",
        "run_id, block_ordinal, idx, title",
        {d.text_row for d in docs if d.kind == "source_title" and d.text_row is not None},
    )
    out: _Texts = {}
    rest: list[_Candidate] = []
    for d in docs:
        block = blocks.get(d.block_row) if d.block_row is not None else None
        if block is not None and block[:2] != (d.run_id, d.block_ordinal):
            block = None
        if d.kind == "block" and block is not None:
            out[d.doc_id] = (block[2], block[3])
            continue
        if d.kind == "final_output" and d.text_row is not None:
            run = runs.get(d.text_row)
            if run is not None and run[0] == d.run_id:
                out[d.doc_id] = (run[1], None)
                continue
        if d.kind == "source_title" and d.text_row is not None:
            src = sources.get(d.text_row)
            key = (d.run_id, d.block_ordinal, d.source_idx)
            if src is not None and src[:3] == key and (block is not None or d.block_row is None):
                out[d.doc_id] = (src[3], block[3] if block is not None else None)
                continue
        rest.append(d)
    return out, rest


def _texts_by_key(
    con: duckdb.DuckDBPyConnection, docs: list[_Candidate], needle: str | None
) -> _Texts:
    """Texts by row key, one hash join per document kind; `needle` (lower-case ASCII) keeps
    only texts that may contain it (a superset of Python's case-insensitive match)."""

    def keep(col: str) -> str:
        return f"WHERE contains(lower({col}), $needle)" if needle is not None else ""

    def ask(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        if needle is not None:
            params["needle"] = needle
        return con.execute(sql, params).fetchall()

    out: _Texts = {}
    blocks = [d for d in docs if d.kind == "block"]
    if blocks:
        sql = f"""WITH h AS (SELECT unnest($doc::BIGINT[]) AS doc_id,
  unnest($run::VARCHAR[]) AS run_id, unnest($ord::BIGINT[]) AS ordinal)
SELECT h.doc_id, b.content, b.name FROM h JOIN blocks b USING (run_id, ordinal)
{keep("b.content")}"""
        params = {
            "doc": [d.doc_id for d in blocks],
            "run": [d.run_id for d in blocks],
            "ord": [d.block_ordinal for d in blocks],
        }
        out.update({r[0]: (r[1], r[2]) for r in ask(sql, params)})
    finals = [d for d in docs if d.kind == "final_output"]
    if finals:
        sql = f"""WITH h AS (SELECT unnest($doc::BIGINT[]) AS doc_id,
  unnest($run::VARCHAR[]) AS run_id)
SELECT h.doc_id, r.final_output FROM h JOIN runs r USING (run_id) {keep("r.final_output")}"""
        params = {"doc": [d.doc_id for d in finals], "run": [d.run_id for d in finals]}
        out.update({r[0]: (r[1], None) for r in ask(sql, params)})
    titles = [d for d in docs if d.kind == "source_title"]
    if titles:
        sql = f"""WITH h AS (SELECT unnest($doc::BIGINT[]) AS doc_id,
  unnest($run::VARCHAR[]) AS run_id, unnest($ord::BIGINT[]) AS block_ordinal,
  unnest($idx::BIGINT[]) AS idx),
t AS (
  SELECT h.doc_id, h.run_id, h.block_ordinal, s.title
  FROM h JOIN block_sources s USING (run_id, block_ordinal, idx) {keep("s.title")}
)
SELECT t.doc_id, t.title, b.name FROM t
LEFT JOIN blocks b ON b.run_id = t.run_id AND b.ordinal = t.block_ordinal"""
        params = {
            "doc": [d.doc_id for d in titles],
            "run": [d.run_id for d in titles],
            "ord": [d.block_ordinal for d in titles],
            "idx": [d.source_idx for d in titles],
        }
        out.update({r[0]: (r[1], r[2]) for r in ask(sql, params)})
    return out


def _texts(
    con: duckdb.DuckDBPyConnection, docs: list[_Candidate], pointers: bool, needle: str | None
) -> _Texts:
    """Text and block name of each document (absent: the row is gone or fails `needle`)."""
    out: _Texts = {}
    rest = docs
    if pointers and len(docs) <= POINTER_BATCH:
        out, rest = _texts_by_pointer(con, docs)
    if rest:
        out.update(_texts_by_key(con, rest, needle))
    return out


def _canvas_urls(con: duckdb.DuckDBPyConnection, run_ids: set[str]) -> dict[str, str | None]:
    if not run_ids:
        return {}
    return dict(
        con.execute(
            "SELECT run_id, canvas_url FROM runs WHERE run_id = ANY($ids::VARCHAR[])",
            {"ids": sorted(run_ids)},
        ).fetchall()
    )


# ----------------------------------------------------------------------------- search


def _phrase(text: str) -> str | None:
    m = re.search(r'"([^"]+)"', text)
    return m.group(1) if m else None


def snippet(text: str | None, words: list[str], width: int = SNIPPET_CHARS) -> str:
    """About `width` characters around the first query word, on one line."""
    if not text:
        return ""
    flat = " ".join(text.split())
    lower = flat.lower()
    positions = [p for w in words if w and (p := lower.find(w.lower())) >= 0]
    start = max(0, min(positions) - width // 4) if positions else 0
    piece = flat[start : start + width]
    return ("…" if start > 0 else "") + piece + ("…" if start + width < len(flat) else "")


def _with_phrase(
    con: duckdb.DuckDBPyConnection,
    ranked: list[_Candidate],
    pointers: bool,
    phrase: str,
    limit: int,
) -> list[tuple[_Candidate, str | None, str | None]]:
    """The first `limit` candidates, in rank order, whose text contains `phrase`."""
    needle = phrase.lower()
    prefilter = needle if needle.isascii() else None  # see the module docstring
    out: list[tuple[_Candidate, str | None, str | None]] = []
    pos, rounds = 0, 0
    while pos < len(ranked) and len(out) < limit:
        if rounds < POINTER_ROUNDS and pointers:
            chunk = ranked[pos : pos + max(POINTER_BATCH, limit)]
        else:
            chunk = ranked[pos:]
        texts = _texts(con, chunk, pointers, prefilter if len(chunk) > POINTER_BATCH else None)
        for d in chunk:
            body, name = texts.get(d.doc_id, (None, None))
            if needle in (body or "").lower():
                out.append((d, body, name))
                if len(out) >= limit:
                    break
        pos += len(chunk)
        rounds += 1
    return out


def search(
    db_path: str | os.PathLike[str],
    text: str,
    block_type: str | None = None,
    since: date | None = None,
    limit: int = 20,
) -> list[SearchHit]:
    """Documents matching every word of `text` (and any "quoted phrase"), best first.

    `block_type` filters on the block type (e.g. `web-research-block`) or on the document
    kind (`final_output`, `source_title`); `since` on the UTC day the run became terminal.
    """
    phrase = _phrase(text)
    terms = query_terms(text)
    if not terms:
        raise AuditError(f"nothing to search for in {text!r} (only stop words?)")
    needle = phrase.lower() if phrase else None
    with reading(db_path, stemmer=False) as con:
        ranked, pointers = _rank(
            con,
            terms,
            block_type,
            since,
            None if phrase else limit,
            needle if needle is not None and needle.isascii() else None,
        )
        if phrase:
            chosen = _with_phrase(con, ranked, pointers, phrase, limit)
        else:
            texts = _texts(con, ranked, pointers, None)
            chosen = [(d, *texts.get(d.doc_id, (None, None))) for d in ranked]
        urls = _canvas_urls(con, {d.run_id for d, _, _ in chosen})
    words = [phrase or "", *text.replace('"', " ").split()]
    return [
        SearchHit(
            run_id=d.run_id,
            kind=d.kind,
            block_id=d.block_id,
            block_name=name,
            block_type=d.block_type,
            score=round(float(d.score), 4),
            snippet=snippet(body, words),
            canvas_url=urls.get(d.run_id),
            day=d.day,
        )
        for d, body, name in chosen
    ]


def _domain(value: str) -> str:
    d = value.strip().lower()
    d = re.sub(r"^[a-z][a-z0-9+.-]*://", "", d)
    d = d.split("/")[0].split("@")[-1].split(":")[0]
    return d.removeprefix("www.")


def cited(
    db_path: str | os.PathLike[str], domain: str, since: date | None = None
) -> list[CitedSource]:
    """Sources that cite `domain` or any of its subdomains, with their runs and blocks."""
    d = _domain(domain)
    if not d:
        raise AuditError(f"not a domain: {domain!r}")
    with reading(db_path, stemmer=False) as con:
        rows = con.execute(
            """SELECT run_id, block_id, block_name, block_type, url, title, domain,
                 canvas_url, day
               FROM cited_sources
               WHERE (domain = $d OR domain = 'www.' || $d OR ends_with(domain, '.' || $d))
                 AND ($since IS NULL OR day >= $since)
               ORDER BY day, run_id, block_id, idx""",
            {"d": d, "since": since},
        ).fetchall()
    return [CitedSource(*r) for r in rows]
