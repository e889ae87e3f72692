"""Row JSON sliced from the text Spine sent, minus the members deliberately left out.

`SourceDoc` parses a `RawDoc` with source spans (`parse_json`); a row's text is the span of
its value with some members cut out (arrays that became rows of their own, `download_url`,
the signed `url`s of blocks). Removing a member takes its separating comma with it and
leaves everything else untouched, so the result is still valid JSON. Where the response was
not valid UTF-8 the same cuts are applied to the original bytes (`raw_bytes` columns); where
a row holds a big string it is built as UTF-8 bytes, never as one Python str.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import pairwise
from typing import Any

from spine_pipeline.archive.flatten.columns import Cols
from spine_pipeline.archive.flatten.urls import redact_unparsed
from spine_pipeline.archive.flatten.values import Buffer
from spine_pipeline.archive.records import RawDoc
from spine_pipeline.spine.rawjson import BigString, Span, parse_json
from spine_pipeline.spine.textfidelity import encode_original, original_if_changed

__all__ = [
    "SourceDoc",
    "items_with_spans",
    "last_index",
    "load_doc",
    "member_deletions",
    "set_raw",
    "unparsed_row",
]


def last_index(sp: Span, key: str) -> int | None:
    """Index in `sp.members` of the member json.loads keeps for `key` (the last duplicate)."""
    if sp.members is None:
        return None
    for i in range(len(sp.members) - 1, -1, -1):
        if sp.members[i][0] == key:
            return i
    return None


def items_with_spans(v: Any, sp: Span | None) -> list[tuple[Any, Span]]:
    """Elements of a list value with their spans; a non-list non-null value is one element."""
    if sp is None or v is None:
        return []
    if isinstance(v, list) and sp.items is not None:
        return list(zip(v, sp.items, strict=True))
    return [(v, sp)]


def member_deletions(sp: Span, removed: set[int]) -> list[tuple[int, int]]:
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


class SourceDoc:
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
            dels.extend(member_deletions(obj, idx))
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
        return out, original_if_changed("".join(orig[a:b] for a, b in pieces), out)

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
                original.append(encode_original(orig[a:b]))
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


def load_doc(raw: RawDoc | None, label: str, errors: list[str]) -> SourceDoc | None:
    """The document parsed for slicing, or None (absent, verbatim, or not valid JSON)."""
    if raw is None or raw.verbatim:  # a verbatim body: its fetch error already says so
        return None
    try:
        return SourceDoc(raw)
    except (ValueError, RecursionError) as exc:
        errors.append(f"{label}: invalid JSON ({exc}); text archived verbatim")
        return None


def unparsed_row(raw: RawDoc) -> tuple[str, bytes | None]:
    """The raw text (and original bytes) of a document that is kept verbatim, redacted."""
    if raw.bigs:  # cannot come from the API (its bodies are parsed); hand-built documents
        raw = RawDoc.verbatim_body(raw.original_bytes())
    text = redact_unparsed(raw.text)
    if raw.raw_bytes is None:
        return text, None
    return text, original_if_changed(redact_unparsed(raw.original_text), text)


def set_raw(doc: SourceDoc, cols: Cols, spans: list[Span]) -> None:
    """Fill raw_json/raw_bytes of rows added earlier (extraction waits for all removals)."""
    extracted = [doc.extract(sp.start, sp.end) for sp in spans]
    cols.cols["raw_json"] = [text for text, _ in extracted]
    cols.cols["raw_bytes"] = [raw for _, raw in extracted]
