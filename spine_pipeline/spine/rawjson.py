"""JSON for pathological payloads: no recursion, source spans, and strings too big to hold.

`json.loads` gives up past ~1,000 levels (RecursionError). Spine task trees are nested
JSON, and a hostile or merely huge tree must still be archived. `parse_json` is an
iterative parser (explicit stack) that also records the source span of every value, so
callers can slice exact text instead of re-serialising; `loads` and `scan_value` use the C
parser first and fall back to it only when the C parser refuses the depth. An iterative
parser was chosen over "raise the recursion limit in a thread with a big stack": it has no
depth ceiling and cannot overflow the C stack (a segfault, not an exception).

Huge strings are the other problem. A 20 MiB block with one emoji is an 85 MB Python `str`
(UCS-4), and the byte-exact archive used to hold several. So a body with string literals of
`BIG_STRING_BYTES` or more is *masked* (`mask_big_strings`): each such literal is replaced by
`""` in a small "lean" text that the ordinary machinery parses, and is represented by a
`BigString`, its span in the UTF-8 body. A BigString is validated and decoded chunkwise
(JSON escapes to UTF-8 bytes, `CHUNK_BYTES` at a time, never splitting an escape, a
surrogate pair or a UTF-8 sequence), so no Python str of it ever exists unless a caller asks
for one (`BigString.text`). JSON's structural characters are ASCII and never occur inside
multi-byte UTF-8 sequences, so the lean text has exactly the structure of the original.
"""

from __future__ import annotations

import json
import json.scanner
import mmap
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from spine_pipeline.spine.spool import has_room, spool
from spine_pipeline.spine.textfidelity import (
    lossy_decode,
    original_if_changed,
    original_text,
    utf8_replacing_surrogates,
)

__all__ = [
    "BIG_STRING_BYTES",
    "CHUNK_BYTES",
    "BigString",
    "LeanText",
    "Span",
    "dumps_iterative",
    "json_error",
    "loads",
    "mask_big_strings",
    "parse_json",
    "parse_key",
    "scan_value",
    "skip_ws",
    "spool_sources",
]

_scanstring = json.decoder.scanstring  # type: ignore[attr-defined]  # the C implementation
# typeshed types the context as a scanner; it takes any object with a decoder's attributes.
_c_scan_once = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_WS = re.compile(r"[ \t\n\r]*")
# ASCII digits only: the C scanner (what json.loads uses) does not accept Unicode digits.
_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")


class Span:
    """Where one JSON value sits in its source text, with the spans of its children.

    `members` is set for objects (`(key, key_start, value_span)` in source order, duplicates
    kept), `items` for arrays; both are None for scalars.
    """

    __slots__ = ("end", "items", "members", "start")

    def __init__(self, start: int, end: int = -1) -> None:
        self.start = start
        self.end = end
        self.members: list[tuple[str, int, Span]] | None = None
        self.items: list[Span] | None = None

    def __repr__(self) -> str:
        kind = "object" if self.members is not None else "array" if self.items is not None else ""
        return f"Span({self.start}, {self.end}{', ' + kind if kind else ''})"

    def last_member(self, key: str) -> Span | None:
        """The span of the value `json.loads` would keep for `key` (the last duplicate)."""
        if self.members is None:
            return None
        for k, _, sp in reversed(self.members):
            if k == key:
                return sp
        return None


def json_error(msg: str, text: str, pos: int) -> json.JSONDecodeError:
    return json.JSONDecodeError(msg, text, pos)


def skip_ws(text: str, pos: int) -> int:
    if pos < len(text) and text[pos] in " \t\n\r":
        return _WS.match(text, pos).end()  # type: ignore[union-attr]
    return pos


def parse_key(text: str, pos: int) -> tuple[str, int, int]:
    """Parse `"key" :` at pos; return key, key start, and the position of the value."""
    if pos >= len(text) or text[pos] != '"':
        raise json_error("Expecting property name enclosed in double quotes", text, pos)
    key, end = _scanstring(text, pos + 1, True)
    end = skip_ws(text, end)
    if end >= len(text) or text[end] != ":":
        raise json_error("Expecting ':' delimiter", text, end)
    return key, pos, skip_ws(text, end + 1)


def parse_json(
    text: str, pos: int = 0, *, whole: bool = True, bigs: Mapping[int, BigString] | None = None
) -> tuple[Any, Span]:
    """Parse JSON without recursion, returning the value and the span tree of the source.

    Accepts exactly what `json.loads` accepts (including NaN/Infinity and duplicate keys, where
    the last value wins in the value but every member stays in `Span.members`). With
    `whole=False` parsing stops after the first value (its span says where). Raises
    `json.JSONDecodeError` (a `ValueError`) on invalid input. `bigs` maps the offsets of the
    `""` placeholders of a lean text (`LeanText.big_map`) to the BigStrings they stand for.
    """
    n = len(text)
    # frame: [container, span, key, key_start]; key is None for arrays
    stack: list[list[Any]] = []
    pos = skip_ws(text, pos)
    while True:
        if pos >= n:
            raise json_error("Expecting value", text, pos)
        ch = text[pos]
        value: Any
        if ch == "{":
            sp = Span(pos)
            sp.members = []
            pos = skip_ws(text, pos + 1)
            if pos < n and text[pos] == "}":
                pos += 1
                sp.end = pos
                value = {}
            else:
                key, key_start, pos = parse_key(text, pos)
                stack.append([{}, sp, key, key_start])
                continue
        elif ch == "[":
            sp = Span(pos)
            sp.items = []
            pos = skip_ws(text, pos + 1)
            if pos < n and text[pos] == "]":
                pos += 1
                sp.end = pos
                value = []
            else:
                stack.append([[], sp, None, 0])
                continue
        elif ch == '"':
            if bigs is not None and pos in bigs:
                value, end = bigs[pos], pos + 2
            else:
                value, end = _scanstring(text, pos + 1, True)
            sp = Span(pos, end)
            pos = end
        else:
            m = _NUMBER.match(text, pos)
            if m is not None:
                integer, frac, exp = m.groups()
                value = float(integer + (frac or "") + (exp or "")) if frac or exp else int(integer)
                end = m.end()
            elif text.startswith("null", pos):
                value, end = None, pos + 4
            elif text.startswith("true", pos):
                value, end = True, pos + 4
            elif text.startswith("false", pos):
                value, end = False, pos + 5
            elif text.startswith("NaN", pos):
                value, end = float("nan"), pos + 3
            elif text.startswith("Infinity", pos):
                value, end = float("inf"), pos + 8
            elif text.startswith("-Infinity", pos):
                value, end = float("-inf"), pos + 9
            else:
                raise json_error("Expecting value", text, pos)
            sp = Span(pos, end)
            pos = end
        # A value is complete: attach it to its parent, closing parents as they complete.
        while True:
            if not stack:
                if whole:
                    pos = skip_ws(text, pos)
                    if pos != n:
                        raise json_error("Extra data", text, pos)
                return value, sp
            frame = stack[-1]
            container, csp, key = frame[0], frame[1], frame[2]
            if key is not None:
                container[key] = value
                csp.members.append((key, frame[3], sp))
            else:
                container.append(value)
                csp.items.append(sp)
            pos = skip_ws(text, pos)
            if pos >= n:
                raise json_error("Unterminated container", text, pos)
            ch = text[pos]
            if ch == ",":
                pos = skip_ws(text, pos + 1)
                if key is not None:
                    frame[2], frame[3], pos = parse_key(text, pos)
                break  # parse the next member / element
            if ch == ("}" if key is not None else "]"):
                pos += 1
                csp.end = pos
                value, sp = container, csp
                stack.pop()
                continue
            raise json_error(
                "Expecting ',' delimiter" if ch not in "}]" else "Mismatched bracket", text, pos
            )


def loads(text: str) -> Any:
    """`json.loads` at C speed, falling back to the iterative parser for deep nesting."""
    try:
        return json.loads(text)
    except RecursionError:
        return parse_json(text)[0]


def scan_value(text: str, pos: int) -> tuple[Any, int]:
    """Parse one value at pos (C scanner, iterative fallback); return it and its end."""
    try:
        return _c_scan_once(text, pos)
    except StopIteration as exc:
        raise json_error("Expecting value", text, exc.value) from None
    except RecursionError:
        value, sp = parse_json(text, pos, whole=False)
        return value, sp.end


class _Lit:
    __slots__ = ("s",)

    def __init__(self, s: str) -> None:
        self.s = s


def dumps_iterative(value: Any) -> str:
    """json.dumps for values nested beyond the recursion limit (explicit stack)."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, _Lit):
            out.append(v.s)
        elif isinstance(v, dict):
            items = list(v.items())
            out.append("{")
            stack.append(_Lit("}"))
            for j in range(len(items) - 1, -1, -1):
                k, x = items[j]
                key = json.dumps(k if isinstance(k, str) else str(k), ensure_ascii=False)
                stack.append(x)
                stack.append(_Lit(("," if j else "") + key + ":"))
        elif isinstance(v, list | tuple):
            out.append("[")
            stack.append(_Lit("]"))
            for j in range(len(v) - 1, -1, -1):
                stack.append(v[j])
                if j:
                    stack.append(_Lit(","))
        elif isinstance(v, BigString):
            out.append(json.dumps(v.text(), ensure_ascii=False))
        else:
            out.append(json.dumps(v, ensure_ascii=False, default=str))
    return "".join(out)


# ----------------------------------------------------------------------- huge string literals

# String literals of at least this many bytes (quotes included) stay in the body as BigStrings.
# Read at call time, so tests can lower it to push small payloads through the same path.
BIG_STRING_BYTES = 1 << 20
# How much of a BigString is decoded at once (its str is at most 4x this in memory). Small
# chunks keep every temporary below glibc's mmap threshold: 256 KiB chunks left ~8 MB of heap
# fragmentation behind for one 20 MiB string (measured), 64 KiB ones almost none.
CHUNK_BYTES = 1 << 16

# Possessive quantifiers: no backtracking stack (a plain `*` kept 30 MB for one 20 MiB literal).
_LITERAL = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
_WS_BYTES = re.compile(rb"[ \t\n\r]*")
# Complete escapes and other bytes from a point known to be outside an escape; group 1 is
# the last escape matched, so a match ending right after a high surrogate can be cut before it.
_ESCAPE_SAFE = re.compile(rb"[^\\]*+(?:(\\(?:u[0-9a-fA-F]{4}|[^u]))[^\\]*+)*+")
_HIGH_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}")
_Buffer = bytes | bytearray | memoryview
# What a BigString points into: the response body, or a spooled copy of it (`spool_sources`).
_Source = bytes | mmap.mmap


def _bytes_error(msg: str, pos: int) -> json.JSONDecodeError:
    """A JSONDecodeError located by byte offset (there is no decoded text to count lines in)."""
    err = json.JSONDecodeError(msg, "", 0)
    err.pos = pos
    err.args = (f"{msg}: byte {pos}",)
    return err


def _utf8_safe(buf: _Source, pos: int, stop: int) -> int:
    """Move `stop` back so that no UTF-8 sequence starting before it is cut (at most 3 bytes)."""
    for i in range(stop - 1, max(pos, stop - 4) - 1, -1):
        byte = buf[i]
        if byte < 0x80:
            return stop
        if byte >= 0xC0:
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return i if i + need > stop and i > pos else stop
    return stop


def _escape_safe(buf: _Source, pos: int, end: int) -> int:
    """The end of the next chunk of a literal's interior: never inside an escape or a pair."""
    target = pos + max(CHUNK_BYTES, 16)
    if target >= end:
        return end
    m = _ESCAPE_SAFE.match(buf, pos, target)
    assert m is not None  # the pattern matches the empty string
    stop = m.end()
    last = m.start(1) if m.lastindex else -1
    if pos < last and m.end(1) == stop and _HIGH_SURROGATE_ESCAPE.fullmatch(buf, last, stop):
        stop = last  # the chunk ends with a high surrogate: its low one may start the next
    if stop <= pos:  # `\\u` not followed by 4 hex digits: json.loads rejects it too
        raise _bytes_error("Invalid \\uXXXX escape", pos)
    return _utf8_safe(buf, pos, stop)


class BigString:
    """A JSON string literal kept as its place in the UTF-8 body, never as one Python str.

    Construction validates the literal as `json.loads` would (control characters, escapes),
    chunk by chunk. `utf8()` is the decoded value as UTF-8 bytes (a zero-copy view when the
    literal has no escapes, else a spooled buffer written chunk by chunk: `spine.spool`),
    with U+FFFD for lone surrogates and for each invalid byte, like the string columns of the
    archive; `literal` is the exact source bytes, quotes included. `source` is the body, or
    a spooled copy of it at the same offsets (`spool_sources`).
    """

    __slots__ = ("_hash", "end", "escaped", "source", "start", "utf8_len", "utf8_valid")

    def __init__(self, source: _Source, start: int, end: int) -> None:
        if end - start < 2 or source[start] != 0x22 or source[end - 1] != 0x22:
            raise ValueError("a BigString spans a whole string literal, quotes included")
        self.source = source
        self.start = start
        self.end = end
        self.escaped = source.find(b"\\", start + 1, end - 1) != -1
        self.utf8_valid = True
        self._hash: int | None = None
        valid = True
        size = 0
        for value, ok in self._chunks():
            valid = valid and ok
            size += len(utf8_replacing_surrogates(value))
        self.utf8_valid = valid
        self.utf8_len = size  # the size of `utf8()`, known without holding the value

    def _chunks(self) -> Iterator[tuple[str, bool]]:
        """The decoded value in pieces (lone surrogates kept, as json.loads keeps them)."""
        buf, pos, end = self.source, self.start + 1, self.end - 1
        while pos < end:
            stop = _escape_safe(buf, pos, end) if self.escaped else self._utf8_chunk(pos, end)
            text, ok = lossy_decode(buf[pos:stop])
            try:
                value, used = _scanstring(text + '"', 0, True)
            except json.JSONDecodeError as exc:
                raise _bytes_error(exc.msg, pos) from None
            if used != len(text) + 1:  # cannot happen: the lexer found this literal's end
                raise _bytes_error("Unterminated string", pos)
            yield value, ok
            pos = stop

    def _utf8_chunk(self, pos: int, end: int) -> int:
        stop = pos + max(CHUNK_BYTES, 16)
        return end if stop >= end else _utf8_safe(self.source, pos, stop)

    @property
    def literal(self) -> memoryview:
        """The exact source bytes of the literal, quotes included (zero-copy)."""
        return memoryview(self.source)[self.start : self.end]

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    def utf8(self) -> _Buffer:
        """The decoded value as valid UTF-8: what a string column stores.

        Without escapes (and valid UTF-8) it is the body's own bytes; otherwise it is decoded
        chunk by chunk into a spooled buffer, so no heap copy of the value ever exists and
        its pages can leave the resident set while other columns are written.
        """
        if not self.escaped and self.utf8_valid:
            return memoryview(self.source)[self.start + 1 : self.end - 1]
        return memoryview(spool(utf8_replacing_surrogates(v) for v, _ in self._chunks()))

    def lossy_literal(self) -> _Buffer:
        """The literal's bytes with one U+FFFD per invalid byte: what a raw_json column stores."""
        if self.utf8_valid:
            return self.literal
        return memoryview(spool(self._lossy_pieces()))

    def _lossy_pieces(self) -> Iterator[bytes]:
        buf, pos, end = self.source, self.start, self.end
        while pos < end:
            stop = self._utf8_chunk(pos, end)
            yield lossy_decode(buf[pos:stop])[0].encode("utf-8")
            pos = stop

    def head(self, chars: int) -> str:
        """The first `chars` characters of the value (for messages; decodes about that much)."""
        out: list[str] = []
        count = 0
        for value, _ in self._chunks():
            out.append(value)
            count += len(value)
            if count >= chars:
                break
        return "".join(out)[:chars]

    def text(self) -> str:
        """The value as `json.loads` gives it: materialises the whole Python str (large!)."""
        return "".join(value for value, _ in self._chunks())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BigString):
            return NotImplemented
        return self.literal == other.literal

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(self.literal)
        return self._hash

    def __repr__(self) -> str:
        return f"BigString(<{self.nbytes} bytes at {self.start}>)"


def spool_sources(bigs: Iterable[BigString]) -> None:
    """Move the bodies these BigStrings point into to spooled buffers (`spine.spool`).

    Each distinct body is copied once, whole, so every offset stays valid (row texts are
    zero-copy slices of the body around a big literal: `archive.flatten.slicing`). Bodies
    already spooled are left alone, and so is a body when no map may be made (`has_room`).
    The caller drops its own reference to the body, so the heap copy goes and what remains
    can leave the resident set.
    """
    moved: dict[int, mmap.mmap | bytes] = {}
    for big in bigs:
        source = big.source
        if isinstance(source, mmap.mmap):
            continue
        if id(source) not in moved:
            copy = spool((memoryview(source),)) if has_room() else source
            moved[id(source)] = copy if isinstance(copy, mmap.mmap) else source
        big.source = moved[id(source)]


@dataclass(frozen=True)
class LeanText:
    """A JSON text with every big string literal replaced by `""` (see `mask_big_strings`).

    `text` is the decoded lean text (one U+FFFD per invalid byte); `original` its exact bytes
    when they were not valid UTF-8 (same character offsets after a surrogateescape decode);
    `bigs` the character offset of each placeholder in `text` with the BigString it stands for.
    """

    text: str
    original: bytes | None
    bigs: tuple[tuple[int, BigString], ...]

    def big_map(self) -> dict[int, BigString]:
        return dict(self.bigs)

    def slice(self, start: int, end: int) -> LeanText:
        """The lean text of [start, end), with its own offsets and original bytes."""
        original = None
        if self.original is not None:
            piece = original_text(self.original)[start:end]
            original = original_if_changed(piece, self.text[start:end])
        bigs = tuple((p - start, b) for p, b in self.bigs if start <= p < end)
        return LeanText(self.text[start:end], original, bigs)


def mask_big_strings(buf: bytes, threshold: int | None = None) -> LeanText | None:
    """The lean form of a JSON body whose string values include big ones; None if none do.

    Only values are masked (a huge object key stays in the text). Raises
    `json.JSONDecodeError` if a big literal is not a valid JSON string. The lexer is exact for
    valid JSON and never makes invalid JSON valid: outside strings JSON has no quotes, so every
    quote it meets opens a literal, and an unterminated one ends the search.
    """
    limit = BIG_STRING_BYTES if threshold is None else threshold
    if len(buf) < limit:
        return None
    spans: list[tuple[int, int]] = []
    for m in _LITERAL.finditer(buf):
        start, end = m.span()
        if end - start < limit:
            continue
        after = _WS_BYTES.match(buf, end).end()  # type: ignore[union-attr]
        if buf[after : after + 1] != b":":
            spans.append((start, end))
    if not spans:
        return None
    bigs: list[tuple[int, BigString]] = []
    texts: list[str] = []
    originals: list[bytes] = []
    lossy = False
    chars = prev = 0
    for start, end in spans:
        segment = buf[prev:start]
        text, ok = lossy_decode(segment)
        lossy = lossy or not ok
        texts.append(text)
        originals.append(segment)
        chars += len(text)
        bigs.append((chars, BigString(buf, start, end)))
        texts.append('""')
        originals.append(b'""')
        chars += 2
        prev = end
    text, ok = lossy_decode(buf[prev:])
    texts.append(text)
    originals.append(buf[prev:])
    lossy = lossy or not ok
    return LeanText("".join(texts), b"".join(originals) if lossy else None, tuple(bigs))
