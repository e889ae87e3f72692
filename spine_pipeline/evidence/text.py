"""Untrusted text made safe to show in the evidence page: escaped, visible, bounded.

Every string in a run is attacker-influenced (a web page an agent read, a name a model chose),
so the page never puts one into HTML raw. Short, single-line fields an auditor relies on to tell
things apart (names, ids, types, statuses, URLs shown as text) also get their control, bidi and
line-separator characters replaced by a visible stand-in: a right-to-left override in a block
name must not make `invoice\u202excod.exe` read as `invoiceexe.doc`. The table is the one
`spine_pipeline.audit.sql.visible` uses for the terminal (kept here rather than imported, so
the offline page and its verifier do not load DuckDB), plus zero-width and BOM characters,
which hide text in HTML where a terminal would show nothing anyway.

Long text (block content, prompts) keeps its bidi characters, because right-to-left languages
need them, and is shown in elements with `unicode-bidi: isolate` (the page's CSS), so what it
reorders stays inside it.
"""

from __future__ import annotations

import html

__all__ = ["attr", "clip", "esc", "esc_visible", "truncate_utf8", "visible"]

_INVISIBLE = (
    *range(0x20),
    0x7F,
    *range(0x80, 0xA0),  # C1 controls
    0x061C,  # Arabic letter mark
    0x200B,  # zero-width space
    0x200C,  # zero-width non-joiner
    0x200E,
    0x200F,
    *range(0x202A, 0x202F),  # bidi embeddings and overrides
    *range(0x2060, 0x2065),  # word joiner, invisible operators
    *range(0x2066, 0x206A),  # bidi isolates
    0x2028,
    0x2029,
    0xFEFF,  # BOM / zero-width no-break space
)


def _picture(code: int) -> str:
    if code < 0x20:
        return chr(0x2400 + code)  # the Unicode control picture: one visible column
    if code == 0x7F:
        return "\u2421"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_VISIBLE = {code: _picture(code) for code in _INVISIBLE}


def visible(text: str) -> str:
    """`text` with every control, bidi, zero-width or line-separator character made visible."""
    return text.translate(_VISIBLE)


def clip(text: str, max_chars: int) -> str:
    """At most `max_chars` characters, ending in `…` when cut (names in headers and nodes)."""
    if len(text) <= max_chars:
        return text
    return text[: max(max_chars - 1, 0)] + "\u2026"


def esc(text: str) -> str:
    """HTML-escaped text (quotes too, so the same function serves attribute values)."""
    return html.escape(text, quote=True)


def esc_visible(value: object, max_chars: int = 200, *, missing: str = "\u2014") -> str:
    """A short field for display: visible, clipped, escaped; `missing` (escaped) for None."""
    if value is None:
        return esc(missing)
    return esc(clip(visible(str(value)), max_chars))


def attr(text: str) -> str:
    """An attribute value: escaped and made visible (no raw newline or bidi in a title)."""
    return esc(visible(text))


def truncate_utf8(text: str, max_bytes: int) -> tuple[str, int]:
    """(the longest prefix of `text` of at most `max_bytes` UTF-8 bytes, its full byte length).

    Cuts on a character boundary, so a truncated block never ends in half a character.
    """
    if len(text) * 4 <= max_bytes:  # cannot exceed: skip encoding (the common, short case)
        return text, len(text.encode("utf-8", "surrogatepass"))
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text, len(data)
    return data[:max_bytes].decode("utf-8", "ignore"), len(data)
