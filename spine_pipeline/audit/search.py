"""Full-text search over block content, final outputs and source titles; cited domains.

BM25 (k1 = 1.2, b = 0.75, like DuckDB's fts `match_bm25`) over the incrementally kept
index (`search_docs`, `search_postings`). Every query word must match (after stemming);
text in double quotes must also appear verbatim (case-insensitive), so auditors can ask for
an exact phrase.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import date

from spine_pipeline.audit.duck import AuditError, reading

SNIPPET_CHARS = 160
K1 = 1.2
B = 0.75


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


_SEARCH_SQL = """
WITH q AS (SELECT DISTINCT audit_term(w) AS term FROM unnest(audit_words($text)) t(w)),
p AS (SELECT p.term, p.doc_id, p.tf FROM search_postings p SEMI JOIN q USING (term)),
df AS (SELECT term, count(*) AS df FROM p GROUP BY term),
st AS (SELECT count(*) AS n, avg(len) AS avgdl FROM search_docs),
scored AS (
  SELECT p.doc_id,
    sum(ln(1 + (st.n - df.df + 0.5) / (df.df + 0.5))
        * p.tf * ($k1 + 1) / (p.tf + $k1 * (1 - $b + $b * d.len / st.avgdl))) AS score,
    count(*) AS matched
  FROM p JOIN df USING (term) JOIN search_docs d USING (doc_id) CROSS JOIN st
  GROUP BY p.doc_id
),
hits AS (
  SELECT d.*, s.score FROM scored s JOIN search_docs d USING (doc_id)
  WHERE s.matched = (SELECT count(*) FROM q)
    AND ($type IS NULL OR d.block_type = $type OR d.kind = $type)
    AND ($since IS NULL OR d.dt >= $since)
),
texts AS (
  SELECT h.*,
    CASE h.kind WHEN 'block' THEN b.content WHEN 'final_output' THEN r.final_output
      ELSE s.title END AS text,
    b.name AS block_name, r.canvas_url
  FROM hits h
  JOIN runs r ON r.run_id = h.run_id
  LEFT JOIN blocks b ON b.run_id = h.run_id AND b.ordinal = h.block_ordinal
  LEFT JOIN block_sources s ON h.kind = 'source_title' AND s.run_id = h.run_id
    AND s.block_ordinal = h.block_ordinal AND s.idx = h.source_idx
)
SELECT run_id, kind, block_id, block_name, block_type, score, text, canvas_url, dt
FROM texts
WHERE $phrase IS NULL OR contains(lower(text), lower($phrase))
ORDER BY score DESC, run_id, block_ordinal NULLS FIRST, source_idx NULLS FIRST
LIMIT $limit
"""


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
    with reading(db_path) as con:
        (words,) = con.execute("SELECT audit_words(?)", [text]).fetchone() or ([],)
        if not words:
            raise AuditError(f"nothing to search for in {text!r} (only stop words?)")
        rows = con.execute(
            _SEARCH_SQL,
            {
                "text": text,
                "type": block_type,
                "since": since,
                "phrase": _phrase(text),
                "limit": limit,
                "k1": K1,
                "b": B,
            },
        ).fetchall()
    return [
        SearchHit(
            run_id=r[0],
            kind=r[1],
            block_id=r[2],
            block_name=r[3],
            block_type=r[4],
            score=round(float(r[5]), 4),
            snippet=snippet(r[6], [_phrase(text) or "", *text.replace('"', " ").split()]),
            canvas_url=r[7],
            day=r[8],
        )
        for r in rows
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
    with reading(db_path) as con:
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
