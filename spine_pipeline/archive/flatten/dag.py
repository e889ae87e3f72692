"""The canvas DAG to rows: `blocks`, `block_sources` and `edges`.

Every node of `nodes` is a `blocks` row and every element of its `sources` a
`block_sources` row; every element of `edges` is an `edges` row. Odd shapes are flattened
best-effort (see docs/archive-format.md): a node that is not an object still gives a row,
with null typed columns and its exact `raw_json`.
"""

from __future__ import annotations

import re
from typing import Any

from spine_pipeline.archive.flatten.columns import Cols
from spine_pipeline.archive.flatten.slicing import (
    SourceDoc,
    items_with_spans,
    last_index,
    set_raw,
)
from spine_pipeline.archive.flatten.urls import EXTERNAL_URL_BLOCK_TYPES, strip_url
from spine_pipeline.archive.flatten.values import (
    Buffer,
    as_str,
    content_fields,
    count_of,
    first_str,
)
from spine_pipeline.archive.records import FetchedRun
from spine_pipeline.spine.rawjson import BigString, Span

__all__ = [
    "SOURCE_TITLE_KEYS",
    "SOURCE_URL_KEYS",
    "artifact_node_ids",
    "flatten_dag",
    "source_fields",
]

SOURCE_URL_KEYS = ("url", "link", "href", "uri", "source_url", "sourceUrl")
SOURCE_TITLE_KEYS = ("title", "name")
_URLISH = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.\-]*://|www\.)\S+")


def source_fields(el: Any) -> tuple[str | None, str | None]:
    """Best-effort (url, title) of one `sources` element."""
    if isinstance(el, dict):
        url = first_str(*(el.get(k) for k in SOURCE_URL_KEYS))
        title = first_str(*(el.get(k) for k in SOURCE_TITLE_KEYS))
        return url, title
    if isinstance(el, str | BigString):
        text = as_str(el)
        if text is not None and _URLISH.fullmatch(text):
            return text, None
    return None, None


def artifact_node_ids(run_value: dict[str, Any], run: FetchedRun) -> set[str]:
    """Node ids that produced artifacts: their urls are pre-signed whatever the block type."""
    ids = {a.artifact_id for a in run.artifacts if isinstance(a.artifact_id, str)}
    result = run_value.get("result")
    for holder in (result if isinstance(result, dict) else {}, run_value):
        arts = holder.get("artifacts")
        if isinstance(arts, list):
            ids.update(
                i
                for i in (as_str(a.get("id")) for a in arts if isinstance(a, dict))
                if i is not None
            )
    return ids


def flatten_dag(
    doc: SourceDoc, artifact_ids: set[str], blocks: Cols, sources: Cols, edges: Cols
) -> tuple[str | Buffer, bytes | None]:
    """Rows of blocks, block_sources and edges; returns the canvas-level dag_raw_json."""
    root, value = doc.span, doc.value
    block_rows: list[Span] = []
    source_rows: list[Span] = []
    sources_json: list[Span | None] = []
    edge_rows: list[Span] = []
    nodes: list[tuple[Any, Span]] = []
    edge_items: list[tuple[Any, Span]] = []
    if isinstance(value, dict):
        for key, dest in (("nodes", nodes), ("edges", edge_items)):
            i = last_index(root, key)
            if i is not None and isinstance(value[key], list):
                sp = root.members[i][2]  # type: ignore[index]
                doc.remove(root, i)
                dest.extend(zip(value[key], sp.items or [], strict=True))

    for ordinal, (node, nsp) in enumerate(nodes):
        row: dict[str, Any] = {"ordinal": ordinal, "url_redacted": False, "sources_count": 0}
        src_sp: Span | None = None
        if isinstance(node, dict):
            block_id, btype = as_str(node.get("id")), as_str(node.get("type"))
            external = btype in EXTERNAL_URL_BLOCK_TYPES and block_id not in artifact_ids
            url = as_str(node.get("url"))
            stored = url if external or url is None else strip_url(url)
            if not external:
                for i, (key, _, msp) in enumerate(nsp.members or []):
                    if key == "url" and doc.text[msp.start] == '"':
                        doc.remove(nsp, i)
            content, nbytes, digest = content_fields(node.get("content"))
            i = last_index(nsp, "sources")
            src = node.get("sources")
            if i is not None:
                src_sp = nsp.members[i][2]  # type: ignore[index]
            row.update(
                block_id=block_id,
                name=as_str(node.get("name")),
                type=btype,
                status=as_str(node.get("status")),
                content=content,
                content_bytes=nbytes,
                content_sha256=digest,
                url=stored,
                url_redacted=stored != url,
                sources_count=count_of(src),
            )
            for idx, (el, esp) in enumerate(items_with_spans(src, src_sp)):
                url_s, title = source_fields(el)
                sources.add(
                    block_id=block_id, block_ordinal=ordinal, idx=idx, url=url_s, title=title
                )
                source_rows.append(esp)
        blocks.add(**row)
        block_rows.append(nsp)
        sources_json.append(src_sp)

    for ordinal, (edge, esp) in enumerate(edge_items):
        e = edge if isinstance(edge, dict) else {}
        edges.add(
            ordinal=ordinal,
            source_id=as_str(e.get("source_id")),
            target_id=as_str(e.get("target_id")),
        )
        edge_rows.append(esp)

    doc.finalize()
    for cols, spans in ((blocks, block_rows), (sources, source_rows), (edges, edge_rows)):
        set_raw(doc, cols, spans)
    blocks.cols["sources_json"] = [doc.extract_span(sp)[0] for sp in sources_json]
    return doc.extract_all()
