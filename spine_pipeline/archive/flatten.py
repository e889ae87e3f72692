"""Turn one terminal Spine run into the archive's Arrow tables, byte-exactly.

Row JSON (`raw_json`, `sources_json`, ...) is *sliced from the text Spine sent*, never
re-serialised: `parse_json` records where every value sits, and a row's text is its span minus
the members deliberately left out. What is left out, and why:

* every `download_url` member, at any depth: pre-signed URLs carry a signature and expire;
  archiving them would store a credential that is useless later anyway;
* string `url` members of blocks that are not external links (artifact node urls are
  pre-signed too); the `url` column keeps them without query string, fragment and userinfo;
* arrays that became rows of their own (DAG `nodes`/`edges`, task `completed`/`not_completed`,
  a task's `children`), so deep trees cost linear space and no row repeats another.

Hostile input never raises: wrong types become nulls (the raw stays in `raw_json`), odd shapes
are flattened best-effort, invalid JSON is kept verbatim and reported in `runs.fetch_errors`,
and trees of any depth are walked with an explicit stack.

Big strings (documents with `RawDoc.bigs`) never become Python strs on the way to Arrow: a
row whose text contains one is built as UTF-8 bytes (a zero-copy view of the response body
when nothing was cut out of it), a big `content` is decoded to bytes chunkwise and hashed from
them, and such values go into their own zero-copy Arrow chunks. Small documents, the common
case, take the ordinary str path (the `big` branches are never entered for them).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from bisect import bisect_left
from collections.abc import Iterable
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any
from urllib.parse import quote

import pyarrow as pa

from spine_pipeline.archive.records import BatchContext, FetchedRun, RawDoc
from spine_pipeline.archive.schemas import TABLES
from spine_pipeline.spine.rawjson import BigString, Span, dumps_iterative, parse_json

__all__ = [
    "CANVAS_URL",
    "EXTERNAL_URL_BLOCK_TYPES",
    "flatten_batch",
    "flatten_batch_by_dt",
    "flatten_run",
    "partition_dt",
    "strip_url",
]

CANVAS_URL = "https://app.getspine.ai/canvas/{}"
# Block types whose `url` is an external reference (kept as received). Any other block's url
# may be a pre-signed artifact URL, so it is stored without query string/fragment/userinfo.
EXTERNAL_URL_BLOCK_TYPES = frozenset({"web-block", "yt-block"})
SOURCE_URL_KEYS = ("url", "link", "href", "uri", "source_url", "sourceUrl")
SOURCE_TITLE_KEYS = ("title", "name")
_URLISH = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.\-]*://|www\.)\S+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Best-effort redaction for documents that are not valid JSON (kept verbatim otherwise).
_JSON_STR = r'"(?:[^"\\]|\\.)*"'
_BAD_DOWNLOAD_URL = re.compile(r'("download_url"\s*:\s*)' + _JSON_STR)
_BAD_URL = re.compile(r'("url"\s*:\s*")((?:[^"\\]|\\.)*)(")')
# A large_string/large_binary value at least this long gets its own zero-copy Arrow chunk.
_ZERO_COPY_BYTES = 1 << 16
Buffer = bytes | bytearray | memoryview
_BUFFERS = (bytes, bytearray, memoryview)


# --------------------------------------------------------------------------- small helpers


def _str(v: Any) -> str | None:
    """A string value as str (a BigString is materialised: only small columns use this)."""
    if isinstance(v, str):
        return v
    return v.text() if isinstance(v, BigString) else None


def _text(v: Any) -> str | Buffer | None:
    """A string value for a large_string column: a BigString stays bytes (its UTF-8 value)."""
    if isinstance(v, str):
        return v
    return v.utf8() if isinstance(v, BigString) else None


def _int(v: Any) -> int | None:
    """Integers only (not bools, not floats), within int64; anything else is null."""
    return v if type(v) is int and _INT64_MIN <= v <= _INT64_MAX else None


def _bool(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def _first(*values: Any) -> str | None:
    for v in values:
        if isinstance(v, str | BigString):
            return _str(v)
    return None


def _clean(s: str) -> str:
    """Replace lone surrogates (from `\\udXXX` escapes) with U+FFFD: Arrow needs valid UTF-8."""
    return _SURROGATE.sub("\ufffd", s)


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _count(v: Any) -> int:
    """len for a list, 0 for absent/null, 1 for any other single value."""
    if isinstance(v, list):
        return len(v)
    return 0 if v is None else 1


def _as_items(v: Any, sp: Span | None) -> list[tuple[Any, Span]]:
    """Elements of a list value with their spans; a non-list non-null value is one element."""
    if sp is None or v is None:
        return []
    if isinstance(v, list) and sp.items is not None:
        return list(zip(v, sp.items, strict=True))
    return [(v, sp)]


def strip_url(url: str) -> str:
    """The url without query string, fragment and userinfo (where signatures and secrets live).

    Plain string surgery, not `urllib` parsing: it cannot raise and changes nothing else.
    """
    cut = len(url)
    for ch in "?#":
        i = url.find(ch)
        if i != -1 and i < cut:
            cut = i
    base = url[:cut]
    scheme_end = base.find("://")
    if scheme_end != -1:
        start = scheme_end + 3
        slash = base.find("/", start)
        authority_end = len(base) if slash == -1 else slash
        at = base.rfind("@", start, authority_end)
        if at != -1:
            base = base[:start] + base[at + 1 :]
    return base


def _redact_unparsed(text: str) -> str:
    """Best-effort redaction of a document that is not valid JSON (kept verbatim otherwise)."""
    text = _BAD_DOWNLOAD_URL.sub(r"\1null", text)
    return _BAD_URL.sub(lambda m: m.group(1) + strip_url(m.group(2)) + m.group(3), text)


def _unparsed_row(raw: RawDoc) -> tuple[str, bytes | None]:
    if raw.bigs:  # cannot come from the API (its bodies are parsed); hand-built documents
        raw = RawDoc.verbatim_body(raw.original_bytes())
    text = _redact_unparsed(raw.text)
    if raw.raw_bytes is None:
        return text, None
    original = _redact_unparsed(raw.original_text)
    return text, None if original == text else _encode_original(original)


def _encode_original(s: str) -> bytes:
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


def _default(value: Any) -> Any:
    return value.text() if isinstance(value, BigString) else str(value)


def _dumps(value: Any) -> str:
    """Compact JSON of an already-parsed value (used only where no source text exists)."""
    try:
        s = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_default)
    except RecursionError:
        s = dumps_iterative(value)
    except ValueError:  # circular structure: not JSON-derived, keep a readable trace
        s = json.dumps(repr(value), ensure_ascii=False)
    if _SURROGATE.search(s):  # lone surrogates: escape them so the text stays exact
        try:
            s = json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=_default)
        except (RecursionError, ValueError):
            s = _clean(s)
    return s


# ------------------------------------------------------------------------ parsed documents


def _last_index(sp: Span, key: str) -> int | None:
    """Index in `sp.members` of the member json.loads keeps for `key` (the last duplicate)."""
    if sp.members is None:
        return None
    for i in range(len(sp.members) - 1, -1, -1):
        if sp.members[i][0] == key:
            return i
    return None


def _member_deletions(sp: Span, removed: set[int]) -> list[tuple[int, int]]:
    """Text ranges to delete so the object keeps only the other members, still valid JSON.

    A removed run of members takes the separator *before* it, except at the start of the
    object, where it takes the separator after it; whitespace elsewhere is untouched.
    """
    m = sp.members
    assert m is not None
    n = len(m)
    kept = [i for i in range(n) if i not in removed]
    if not kept:
        return [(m[0][1], m[-1][2].end)]
    out: list[tuple[int, int]] = []
    if kept[0] > 0:
        out.append((m[0][1], m[kept[0]][1]))
    for a, b in pairwise(kept):
        if b > a + 1:
            out.append((m[a][2].end, m[b - 1][2].end))
    if kept[-1] < n - 1:
        out.append((m[kept[-1]][2].end, m[n - 1][2].end))
    return out


class _Doc:
    """A RawDoc parsed with spans; slices exact row text minus the members removed from it."""

    def __init__(self, raw: RawDoc) -> None:
        self.raw = raw
        self.text = raw.text
        self.value, self.span = parse_json(raw.text, bigs=raw.big_map if raw.bigs else None)
        self._removed: dict[int, tuple[Span, set[int]]] = {}
        self._starts: list[int] = []
        self._dels: list[tuple[int, int]] = []
        self._big_at = [pos for pos, _ in raw.bigs]
        self._bigs = [big for _, big in raw.bigs]

    def remove(self, obj: Span, index: int) -> None:
        """Leave member `index` of object `obj` out of every row text that contains it."""
        self._removed.setdefault(id(obj), (obj, set()))[1].add(index)

    def finalize(self) -> None:
        """Add every `download_url` member and turn removals into sorted deletion ranges."""
        stack = [self.span]
        while stack:
            sp = stack.pop()
            if sp.members is not None:
                for i, (key, _, child) in enumerate(sp.members):
                    if key == "download_url":
                        self.remove(sp, i)
                    if child.members is not None or child.items is not None:
                        stack.append(child)
            elif sp.items is not None:
                stack.extend(c for c in sp.items if c.members is not None or c.items is not None)
        dels: list[tuple[int, int]] = []
        for obj, idx in self._removed.values():
            dels.extend(_member_deletions(obj, idx))
        dels.sort()
        self._dels = dels
        self._starts = [a for a, _ in dels]

    def extract(self, start: int, end: int) -> tuple[str | Buffer, bytes | None]:
        """Text of [start, end) minus deletions inside it, and the original bytes if they differ.

        Deletions nest (a removed array contains removed members); after applying one, the
        search jumps past its end, so each row costs only its own size. A range holding a big
        string comes back as UTF-8 bytes (see `_extract_big`).
        """
        pieces: list[tuple[int, int]] = []
        cur = start
        i = bisect_left(self._starts, start)
        while i < len(self._starts) and self._starts[i] < end:
            a, b = self._dels[i]
            if b > end:  # cannot happen for well-nested spans; never cut a row short
                break
            pieces.append((cur, a))
            cur = b
            i = bisect_left(self._starts, b, i)
        pieces.append((cur, end))
        if self._big_at:
            j = bisect_left(self._big_at, start)
            if j < len(self._big_at) and self._big_at[j] < end:
                return self._extract_big(pieces, j)
        text = self.text
        out = text[start:end] if len(pieces) == 1 else "".join(text[a:b] for a, b in pieces)
        if self.raw.raw_bytes is None:
            return out, None
        orig = self.raw.original_text
        original = "".join(orig[a:b] for a, b in pieces)
        return out, None if original == out else _encode_original(original)

    def _extract_big(self, pieces: list[tuple[int, int]], j: int) -> tuple[Buffer, bytes | None]:
        """`extract` of pieces holding big strings: UTF-8 bytes, never a str of the whole row.

        Uncut text with valid UTF-8 is a zero-copy view of the response body (the lean text
        maps onto it piece by piece); otherwise the pieces are joined once.
        """
        text = self.text
        orig = self.raw.original_text if self.raw.raw_bytes is not None else None
        out: list[Buffer] = []
        original: list[Buffer] = []
        lossy = False
        first: BigString | None = None
        at, bigs = self._big_at, self._bigs

        def segment(a: int, b: int) -> None:
            nonlocal lossy
            piece = text[a:b]
            encoded = piece.encode("utf-8")
            out.append(encoded)
            if orig is not None and orig[a:b] != piece:
                lossy = True
                original.append(_encode_original(orig[a:b]))
            else:
                original.append(encoded)

        for a, b in pieces:
            cur = a
            while j < len(at) and at[j] < b:
                if at[j] >= a:  # placeholders inside a deleted range are skipped
                    big = bigs[j]
                    first = first or big
                    segment(cur, at[j])
                    out.append(big.lossy_literal())
                    original.append(big.literal)
                    lossy = lossy or not big.utf8_valid
                    cur = at[j] + 2
                j += 1
            segment(cur, b)
        if first is not None and len(pieces) == 1 and not lossy:
            size = sum(len(p) for p in out)
            offset = first.start - len(out[0])
            return memoryview(first.source)[offset : offset + size], None
        return b"".join(out), b"".join(original) if lossy else None

    def extract_span(self, sp: Span | None) -> tuple[str | Buffer | None, bytes | None]:
        if sp is None:
            return None, None
        return self.extract(sp.start, sp.end)

    def extract_all(self) -> tuple[str | Buffer, bytes | None]:
        """The whole text (surrounding whitespace included) minus deletions."""
        return self.extract(0, len(self.text))


def _load(raw: RawDoc | None, label: str, errors: list[str]) -> _Doc | None:
    if raw is None or raw.verbatim:  # a verbatim body: its fetch error already says so
        return None
    try:
        return _Doc(raw)
    except (ValueError, RecursionError) as exc:
        errors.append(f"{label}: invalid JSON ({exc}); text archived verbatim")
        return None


# ------------------------------------------------------------------------------ row tables


class _Cols:
    """Column lists for one table; constant columns are filled at build time."""

    def __init__(self, table: str) -> None:
        self.schema = TABLES[table]
        self.names = set(self.schema.names)
        self.cols: dict[str, list[Any]] = {n: [] for n in self.schema.names}
        self.n = 0

    def add(self, **row: Any) -> None:
        extra = row.keys() - self.names
        if extra:
            raise KeyError(f"unknown columns {sorted(extra)}")
        for name, values in self.cols.items():
            values.append(row.get(name))
        self.n += 1

    def build(self, const: dict[str, Any], big: bool = False) -> pa.Table:
        """The Arrow table; `big` when a document had big strings (bytes values to expect)."""
        arrays: list[pa.Array | pa.ChunkedArray] = []
        for f in self.schema:
            values = [const[f.name]] * self.n if f.name in const else self.cols[f.name]
            arrays.append(_big_array(values, f.type) if big else _array(values, f.type))
        return pa.Table.from_arrays(arrays, schema=self.schema)


def _array(values: list[Any], type_: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=type_)
    except UnicodeEncodeError:  # a lone surrogate from a JSON \udXXX escape
        if pa.types.is_list(type_):
            values = [
                None if v is None else [_clean(x) if isinstance(x, str) else x for x in v]
                for v in values
            ]
        else:
            values = [_clean(v) if isinstance(v, str) else v for v in values]
        return pa.array(values, type=type_)


def _one_value(value: Buffer, type_: pa.DataType) -> pa.Array:
    """A one-value array over `value`'s memory (no copy); string values are UTF-8-checked."""
    offsets = pa.py_buffer(struct.pack("<2q", 0, memoryview(value).nbytes))
    array = pa.Array.from_buffers(type_, 1, [None, offsets, pa.py_buffer(value)])
    if pa.types.is_large_string(type_):
        array.validate(full=True)
    return array


def _big_array(values: list[Any], type_: pa.DataType) -> pa.Array | pa.ChunkedArray:
    """`_array` for columns that may hold bytes values: big ones become zero-copy chunks."""
    if not (pa.types.is_large_string(type_) or pa.types.is_large_binary(type_)):
        return _array(values, type_)
    chunks: list[pa.Array] = []
    run: list[Any] = []
    for v in values:
        if isinstance(v, _BUFFERS) and memoryview(v).nbytes >= _ZERO_COPY_BYTES:
            if run:
                chunks.append(_array(run, type_))
                run = []
            chunks.append(_one_value(v, type_))
        else:
            run.append(bytes(v) if isinstance(v, bytearray | memoryview) else v)
    if not chunks:
        return _array(run, type_)
    if run:
        chunks.append(_array(run, type_))
    return pa.chunked_array(chunks, type=type_)


def _source_fields(el: Any) -> tuple[str | None, str | None]:
    """Best-effort (url, title) of one `sources` element."""
    if isinstance(el, dict):
        url = _first(*(el.get(k) for k in SOURCE_URL_KEYS))
        title = _first(*(el.get(k) for k in SOURCE_TITLE_KEYS))
        return url, title
    if isinstance(el, str | BigString):
        text = _str(el)
        if text is not None and _URLISH.fullmatch(text):
            return text, None
    return None, None


def _content_fields(content: Any) -> tuple[str | Buffer | None, int | None, str | None]:
    """(content, UTF-8 length, sha256 hex) of a string content; nulls otherwise.

    A big content stays UTF-8 bytes: decoded once, hashed and stored from the same buffer.
    """
    if isinstance(content, BigString):
        data = content.utf8()
        return data, memoryview(data).nbytes, hashlib.sha256(data).hexdigest()
    if not isinstance(content, str):
        return None, None, None
    try:
        data = content.encode("utf-8")
    except UnicodeEncodeError:
        content = _clean(content)
        data = content.encode("utf-8")
    return content, len(data), hashlib.sha256(data).hexdigest()


def _artifact_ids(run_value: dict[str, Any], run: FetchedRun) -> set[str]:
    """Node ids that produced artifacts: their urls are pre-signed whatever the block type."""
    ids = {a.artifact_id for a in run.artifacts if isinstance(a.artifact_id, str)}
    result = run_value.get("result")
    for holder in (result if isinstance(result, dict) else {}, run_value):
        arts = holder.get("artifacts")
        if isinstance(arts, list):
            ids.update(
                i for i in (_str(a.get("id")) for a in arts if isinstance(a, dict)) if i is not None
            )
    return ids


def _set_raw(doc: _Doc, cols: _Cols, spans: list[Span]) -> None:
    """Fill raw_json/raw_bytes of rows added earlier (extraction waits for all removals)."""
    extracted = [doc.extract(sp.start, sp.end) for sp in spans]
    cols.cols["raw_json"] = [text for text, _ in extracted]
    cols.cols["raw_bytes"] = [raw for _, raw in extracted]


def _flatten_dag(
    doc: _Doc, artifact_ids: set[str], blocks: _Cols, sources: _Cols, edges: _Cols
) -> tuple[str, bytes | None]:
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
            i = _last_index(root, key)
            if i is not None and isinstance(value[key], list):
                sp = root.members[i][2]  # type: ignore[index]
                doc.remove(root, i)
                dest.extend(zip(value[key], sp.items or [], strict=True))

    for ordinal, (node, nsp) in enumerate(nodes):
        row: dict[str, Any] = {"ordinal": ordinal, "url_redacted": False, "sources_count": 0}
        src_sp: Span | None = None
        if isinstance(node, dict):
            block_id, btype = _str(node.get("id")), _str(node.get("type"))
            external = btype in EXTERNAL_URL_BLOCK_TYPES and block_id not in artifact_ids
            url = _str(node.get("url"))
            stored = url if external or url is None else strip_url(url)
            if not external:
                for i, (key, _, msp) in enumerate(nsp.members or []):
                    if key == "url" and doc.text[msp.start] == '"':
                        doc.remove(nsp, i)
            content, nbytes, digest = _content_fields(node.get("content"))
            i = _last_index(nsp, "sources")
            src = node.get("sources")
            if i is not None:
                src_sp = nsp.members[i][2]  # type: ignore[index]
            row.update(
                block_id=block_id,
                name=_str(node.get("name")),
                type=btype,
                status=_str(node.get("status")),
                content=content,
                content_bytes=nbytes,
                content_sha256=digest,
                url=stored,
                url_redacted=stored != url,
                sources_count=_count(src),
            )
            for idx, (el, esp) in enumerate(_as_items(src, src_sp)):
                url_s, title = _source_fields(el)
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
            ordinal=ordinal, source_id=_str(e.get("source_id")), target_id=_str(e.get("target_id"))
        )
        edge_rows.append(esp)

    doc.finalize()
    for cols, spans in ((blocks, block_rows), (sources, source_rows), (edges, edge_rows)):
        _set_raw(doc, cols, spans)
    blocks.cols["sources_json"] = [doc.extract_span(sp)[0] for sp in sources_json]
    return doc.extract_all()


def _flatten_tasks(doc: _Doc, tasks: _Cols) -> tuple[str, bytes | None]:
    """Preorder rows of both task forests with an explicit stack (any depth)."""
    root, value = doc.span, doc.value
    forests: list[tuple[str, list[tuple[Any, Span]]]] = []
    if isinstance(value, dict):
        for subtree in ("completed", "not_completed"):
            i = _last_index(root, subtree)
            if i is not None and isinstance(value[subtree], list):
                sp = root.members[i][2]  # type: ignore[index]
                doc.remove(root, i)
                forests.append((subtree, list(zip(value[subtree], sp.items or [], strict=True))))

    # entry: value, span, subtree, depth, parent_ordinal, parent_task_id, root_ordinal, root_id
    stack: list[tuple[Any, Span, str, int, int | None, str | None, int | None, str | None]] = []
    for subtree, items in reversed(forests):
        for v, sp in reversed(items):
            stack.append((v, sp, subtree, 0, None, None, None, None))
    row_spans: list[Span] = []
    ordinal = 0
    while stack:
        v, sp, subtree, depth, parent_ord, parent_id, root_ord, root_id = stack.pop()
        node = v if isinstance(v, dict) else {}
        task_id = _str(node.get("task_id"))
        if root_ord is None:
            root_ord, root_id = ordinal, task_id
        child_count = 0
        i = _last_index(sp, "children") if node else None
        if i is not None and isinstance(node["children"], list):
            csp = sp.members[i][2]  # type: ignore[index]
            doc.remove(sp, i)
            kids = node["children"]
            child_count = len(kids)
            for kv, ks in zip(reversed(kids), reversed(csp.items or []), strict=True):
                stack.append((kv, ks, subtree, depth + 1, ordinal, task_id, root_ord, root_id))
        tasks.add(
            task_id=task_id,
            parent_task_id=parent_id,
            root_task_id=root_id,
            depth=depth,
            name=_str(node.get("name")),
            task_type=_str(node.get("task_type")),
            status=_str(node.get("status")),
            subtree=subtree,
            ordinal=ordinal,
            parent_ordinal=parent_ord,
            root_ordinal=root_ord,
            child_count=child_count,
        )
        row_spans.append(sp)
        ordinal += 1

    doc.finalize()
    _set_raw(doc, tasks, row_spans)
    return doc.extract_all()


def _flatten_errors(doc: _Doc, errors: _Cols) -> None:
    value = doc.value
    sp = doc.span.last_member("errors") if isinstance(value, dict) else None
    items = _as_items(value.get("errors") if isinstance(value, dict) else None, sp)
    for idx, (el, esp) in enumerate(items):
        e = el if isinstance(el, dict) else {}
        text, raw = doc.extract(esp.start, esp.end)
        errors.add(
            idx=idx,
            error=_text(el) if isinstance(el, str | BigString) else _text(e.get("error")),
            block_id=_str(e.get("block_id")),
            block_type=_str(e.get("block_type")),
            recoverable=_bool(e.get("recoverable")),
            raw_json=text,
            raw_bytes=raw,
        )


def flatten_run(run: FetchedRun, ctx: BatchContext) -> dict[str, pa.Table]:
    """All seven tables for one terminal run (empty tables where a part is missing).

    Never raises on payload content: problems are recorded in `runs.fetch_errors`.
    """
    problems = [str(e) for e in run.fetch_errors]
    run_doc = _load(run.run, "run", problems)
    dag_doc = _load(run.dag, "dag", problems)
    tasks_doc = _load(run.tasks, "tasks", problems)

    rv = run_doc.value if run_doc is not None and isinstance(run_doc.value, dict) else {}
    dv = dag_doc.value if dag_doc is not None and isinstance(dag_doc.value, dict) else {}
    tv = tasks_doc.value if tasks_doc is not None and isinstance(tasks_doc.value, dict) else {}
    result = rv.get("result") if isinstance(rv.get("result"), dict) else {}
    meta = rv.get("metadata") if isinstance(rv.get("metadata"), dict) else {}
    canvas_id = _first(rv.get("canvas_id"), dv.get("canvas_id"), tv.get("canvas_id"))

    t = {name: _Cols(name) for name in TABLES}

    dag_raw: tuple[str | None, bytes | None] = (None, None)
    if dag_doc is not None:
        dag_raw = _flatten_dag(
            dag_doc, _artifact_ids(rv, run), t["blocks"], t["block_sources"], t["edges"]
        )
    elif run.dag is not None:
        dag_raw = _unparsed_row(run.dag)

    tasks_raw: tuple[str | None, bytes | None] = (None, None)
    if tasks_doc is not None:
        tasks_raw = _flatten_tasks(tasks_doc, t["tasks"])
    elif run.tasks is not None:
        tasks_raw = _unparsed_row(run.tasks)

    if run_doc is not None:
        run_doc.finalize()
        _flatten_errors(run_doc, t["run_errors"])
        raw_json, raw_bytes = run_doc.extract_all()
        blocks_json = run_doc.extract_span(run_doc.span.last_member("blocks"))[0]
        progress_json = run_doc.extract_span(run_doc.span.last_member("progress"))[0]
    else:
        raw_json, raw_bytes = _unparsed_row(run.run)
        blocks_json = progress_json = None

    for i, a in enumerate(run.artifacts):
        raw = a.raw
        if isinstance(raw, dict):
            raw = {k: v for k, v in raw.items() if k != "download_url"}
        t["artifacts"].add(
            artifact_id=_str(a.artifact_id),
            type=_str(a.type),
            name=_str(a.name),
            reported_size_bytes=_int(a.reported_size_bytes),
            size_bytes=_int(a.size_bytes),
            sha256=_str(a.sha256),
            storage_uri=_str(a.storage_uri),
            content_type=_str(a.content_type),
            downloaded_at=_utc(a.downloaded_at),
            download_error=_str(a.download_error),
            ordinal=i,
            raw_json=_dumps(raw),
        )

    models = meta.get("models_used")
    final_output = result.get("final_output", rv.get("final_output"))
    t["runs"].add(
        canvas_id=canvas_id,
        canvas_name=_str(dv.get("canvas_name")),
        canvas_url=None if canvas_id is None else CANVAS_URL.format(quote(_clean(canvas_id), "")),
        status=_str(rv.get("status")),
        prompt=_text(rv.get("prompt")),
        template=_str(rv.get("template")),
        template_used=_str(meta.get("template_used")),
        models_used=[_str(m) for m in models] if isinstance(models, list) else None,
        credits_consumed=_int(meta.get("credits_consumed")),
        duration_ms=_int(rv.get("duration_ms")),
        final_output=_text(final_output),
        error_count=t["run_errors"].n,
        block_count=t["blocks"].n,
        artifact_count=t["artifacts"].n,
        edge_count=t["edges"].n,
        task_count=t["tasks"].n,
        request_name=_str(run.request_name),
        submitted_at=_utc(run.submitted_at),
        terminal_at=_utc(run.terminal_at),
        raw_json=raw_json,
        raw_bytes=raw_bytes,
        agent_instructions=_text(rv.get("agent_instructions")),
        blocks_json=blocks_json,
        progress_json=progress_json,
        fetch_errors=problems,
        dag_raw_json=dag_raw[0],
        dag_raw_bytes=dag_raw[1],
        tasks_raw_json=tasks_raw[0],
        tasks_raw_bytes=tasks_raw[1],
    )

    const = {
        "run_id": run.run_id,
        "canvas_id": canvas_id,
        "batch_id": ctx.batch_id,
        "archived_at": _utc(ctx.archived_at),
    }
    big = any(d is not None and d.bigs for d in (run.run, run.dag, run.tasks))
    return {
        name: cols.build({k: v for k, v in const.items() if k in cols.names}, big)
        for name, cols in t.items()
    }


def flatten_batch(runs: Iterable[FetchedRun], ctx: BatchContext) -> dict[str, pa.Table]:
    """All seven tables for a batch; raises ValueError if a run id repeats (exactly-once)."""
    seen: set[str] = set()
    parts: dict[str, list[pa.Table]] = {name: [] for name in TABLES}
    for run in runs:
        if run.run_id in seen:
            raise ValueError(f"run {run.run_id!r} appears twice in one batch")
        seen.add(run.run_id)
        for name, table in flatten_run(run, ctx).items():
            parts[name].append(table)
    return {
        name: pa.concat_tables(tables) if tables else TABLES[name].empty_table()
        for name, tables in parts.items()
    }


def partition_dt(run: FetchedRun) -> str:
    """The `dt=` partition of a run: the UTC date it became terminal (YYYY-MM-DD)."""
    return _utc(run.terminal_at).date().isoformat()  # type: ignore[union-attr]


def flatten_batch_by_dt(
    runs: Iterable[FetchedRun], ctx: BatchContext
) -> dict[str, dict[str, pa.Table]]:
    """`flatten_batch` split by `dt=` partition: {dt: {table: rows}} (one file per table per dt)."""
    by_dt: dict[str, list[FetchedRun]] = {}
    for run in runs:
        by_dt.setdefault(partition_dt(run), []).append(run)
    seen: set[str] = set()
    for group in by_dt.values():
        for run in group:
            if run.run_id in seen:
                raise ValueError(f"run {run.run_id!r} appears twice in one batch")
            seen.add(run.run_id)
    return {dt: flatten_batch(group, ctx) for dt, group in sorted(by_dt.items())}
