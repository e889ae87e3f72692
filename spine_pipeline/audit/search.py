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


# {terms} is a literal list of UBIGINT term hashes (computed first, so the scan uses an IN
# filter, pruned by row-group statistics). Texts are fetched by a second query from the
# known (small) hit list: joined in one query, DuckDB would hash whole `blocks` tables.
_HITS_SQL = """
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
ORDER BY s.score DESC, d.run_id, d.block_ordinal NULLS FIRST, d.source_idx NULLS FIRST
{limit}
"""

_TEXTS_SQL = """
WITH h AS (
  SELECT unnest($doc_id::BIGINT[]) AS doc_id, unnest($kind::VARCHAR[]) AS kind,
    unnest($run_id::VARCHAR[]) AS run_id, unnest($ordinal::BIGINT[]) AS block_ordinal,
    unnest($idx::BIGINT[]) AS source_idx
)
SELECT h.doc_id,
  CASE h.kind WHEN 'block' THEN b.content WHEN 'final_output' THEN r.final_output
    ELSE s.title END AS text,
  b.name AS block_name, r.canvas_url
FROM h
JOIN runs r ON r.run_id = h.run_id
LEFT JOIN blocks b ON b.run_id = h.run_id AND b.ordinal = h.block_ordinal
LEFT JOIN block_sources s ON h.kind = 'source_title' AND s.run_id = h.run_id
  AND s.block_ordinal = h.block_ordinal AND s.idx = h.source_idx
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
    phrase = _phrase(text)
    with reading(db_path) as con:
        (terms,) = con.execute(
            "SELECT list(DISTINCT audit_term(w)) FROM unnest(audit_words(?)) t(w)", [text]
        ).fetchone() or ([],)
        if not terms:
            raise AuditError(f"nothing to search for in {text!r} (only stop words?)")
        hits = con.execute(
            _HITS_SQL.format(
                terms=", ".join(str(int(t)) for t in terms),
                limit="" if phrase else f"LIMIT {int(limit)}",
            ),
            {"nterms": len(terms), "type": block_type, "since": since, "k1": K1, "b": B},
        ).fetchall()
        texts = {}
        if hits:
            cols = list(zip(*hits, strict=True))
            texts = {
                r[0]: r[1:]
                for r in con.execute(
                    _TEXTS_SQL,
                    {
                        "doc_id": list(cols[0]),
                        "kind": list(cols[1]),
                        "run_id": list(cols[2]),
                        "ordinal": list(cols[4]),
                        "idx": list(cols[5]),
                    },
                ).fetchall()
            }
    words = [phrase or "", *text.replace('"', " ").split()]
    out: list[SearchHit] = []
    for doc_id, kind, run_id, block_id, _, _, btype, day, score in hits:
        body, block_name, canvas_url = texts.get(doc_id, (None, None, None))
        if phrase and phrase.lower() not in (body or "").lower():
            continue
        out.append(
            SearchHit(
                run_id=run_id,
                kind=kind,
                block_id=block_id,
                block_name=block_name,
                block_type=btype,
                score=round(float(score), 4),
                snippet=snippet(body, words),
                canvas_url=canvas_url,
                day=day,
            )
        )
        if len(out) >= limit:
            break
    return out


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
