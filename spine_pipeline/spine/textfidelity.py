"""Text that is not quite Unicode: invalid UTF-8 and lone surrogates, with nothing lost.

A response body may hold invalid UTF-8, and a JSON escape may encode a lone surrogate
(`"\\ud800"`): valid JSON, not valid Unicode. Arrow strings must be valid UTF-8, and the
archive must still be able to give back exactly what Spine sent. The rules, kept here once
for the client, the records and the flattener:

* **Text** is decoded with one U+FFFD per invalid byte (`lossy_decode`). Python's
  `errors="replace"` would give one per maximal invalid subsequence, so offsets in the text
  would not match offsets in the bytes; with one per byte, a character offset in the text is
  the same offset in the *original text* (`original_text`: the bytes decoded with
  `surrogateescape`, each invalid byte as a lone surrogate U+DC80..U+DCFF).
* **Original bytes** are that original text encoded back (`encode_original`), kept only
  where they differ from the text (`original_if_changed`).
* **Lone surrogates** that came from JSON escapes become U+FFFD in any typed string value
  (`replace_surrogates`, `utf8_replacing_surrogates`); the JSON text keeps the escape.
"""

from __future__ import annotations

import re

__all__ = [
    "ESCAPED_BYTE",
    "SURROGATE",
    "encode_original",
    "lossy_decode",
    "normalise",
    "original_if_changed",
    "original_text",
    "replace_surrogates",
    "utf8_replacing_surrogates",
]

# An invalid byte as `surrogateescape` decodes it.
ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
# Any surrogate code point: never valid in UTF-8.
SURROGATE = re.compile("[\ud800-\udfff]")


def lossy_decode(raw: bytes) -> tuple[str, bool]:
    """UTF-8 decode with one U+FFFD per invalid byte; True if the bytes were valid UTF-8."""
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return ESCAPED_BYTE.sub("\ufffd", raw.decode("utf-8", "surrogateescape")), False


def original_text(raw: bytes) -> str:
    """The bytes as characters, each invalid byte a lone surrogate (offsets match the text)."""
    return raw.decode("utf-8", "surrogateescape")


def encode_original(text: str) -> bytes:
    """The bytes of an original-text slice (or of any str carrying lone surrogates)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return text.encode("utf-8", "surrogatepass")


def original_if_changed(original: str, text: str) -> bytes | None:
    """The bytes of `original` when decoding changed them into `text`; None if it did not."""
    return None if original == text else encode_original(original)


def normalise(data: str | bytes | bytearray | memoryview) -> tuple[str, bytes | None]:
    """Valid Unicode text, and the original bytes if the text is not their exact decoding.

    A str is taken as the original text: one carrying lone surrogates (e.g. decoded with
    `surrogateescape`) is encoded back to its bytes first.
    """
    if isinstance(data, str):
        if data.isascii():
            return data, None
        try:
            data.encode("utf-8")
            return data, None
        except UnicodeEncodeError:
            raw = encode_original(data)
    else:
        raw = bytes(data)
    text, valid = lossy_decode(raw)
    return text, None if valid else raw


def replace_surrogates(text: str) -> str:
    """Lone surrogates (from `\\udXXX` escapes) as U+FFFD: Arrow needs valid UTF-8."""
    return SURROGATE.sub("\ufffd", text)


def utf8_replacing_surrogates(text: str) -> bytes:
    """UTF-8 of a decoded string value, lone surrogates as U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return replace_surrogates(text).encode("utf-8")
