"""HTTP content-codings (gzip, deflate) decoded as a stream, a bounded piece at a time.

An artifact is stored as a browser would save it: decoded. The client reads the body raw
(`iter_raw`, so the byte count it checks against `Content-Length` is the one the header
describes) and decodes it here rather than through httpx's `iter_bytes`, whose decoders
inflate a whole network read in one call: a gzip bomb turns one 64 KiB read into some
64 MiB in memory before a size cap sees a byte. Every zlib call here is capped at `piece`
bytes of output (zlib's `max_length`), so a size cap is checked between pieces and memory
holds one piece per coding layer, whatever the compression ratio.

Only the codings the client asks for (`ACCEPT_ENCODING`) are decoded; anything else is an
error rather than a stored blob the archive would describe wrongly.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

#: What the client offers; servers that compress anyway are decoded all the same.
ACCEPT_ENCODING = "gzip, deflate"
MAX_LAYERS = 3
_GZIP_WBITS = 16 + zlib.MAX_WBITS


class ContentCodingError(ValueError):
    """The body cannot be decoded: an unknown coding, or data that is not what it says."""


class IncompleteCodingError(ContentCodingError):
    """The compressed stream stopped before its end (the body may have been cut short)."""


class _Inflater:
    """One gzip (multi-member) or deflate (zlib-wrapped, or raw as some servers send) layer."""

    def __init__(self, coding: str, piece: int) -> None:
        self.coding = coding
        self.piece = piece
        self.started = False
        self.zobj = zlib.decompressobj(_GZIP_WBITS if coding == "gzip" else zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        pending = data
        while pending:
            if self.zobj.eof:  # a further gzip member follows the one just finished
                if self.coding != "gzip":
                    raise ContentCodingError("data after the end of the deflate stream")
                self.zobj = zlib.decompressobj(_GZIP_WBITS)
            try:
                out = self.zobj.decompress(pending, self.piece)
            except zlib.error as exc:
                if self.coding == "deflate" and not self.started:
                    self.started = True  # not zlib-wrapped: try raw deflate once
                    self.zobj = zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise ContentCodingError(f"invalid {self.coding} data ({exc})") from None
            self.started = True
            if out:
                yield out
            pending = self.zobj.unused_data if self.zobj.eof else self.zobj.unconsumed_tail

    def finish(self) -> Iterator[bytes]:
        if not self.started:  # an empty body is empty, whatever its header says
            return
        if not self.zobj.eof:
            raise IncompleteCodingError(f"the {self.coding} stream ended early")
        if tail := self.zobj.flush():  # at most one back-reference's worth of bytes
            yield tail


class StreamDecoder:
    """Decodes a body coded with `content_encoding` (a header value, or None)."""

    def __init__(self, content_encoding: str | None, piece: int) -> None:
        codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
        codings = [c for c in codings if c and c != "identity"]
        codings = ["gzip" if c == "x-gzip" else c for c in codings]
        unknown = [c for c in codings if c not in ("gzip", "deflate")]
        if unknown:
            raise ContentCodingError(f"unsupported Content-Encoding {unknown[0][:40]!r}")
        if len(codings) > MAX_LAYERS:
            raise ContentCodingError(f"more than {MAX_LAYERS} content-codings")
        # Codings are listed in the order applied, so they are undone last first.
        self.layers = [_Inflater(c, piece) for c in reversed(codings)]

    @property
    def identity(self) -> bool:
        return not self.layers

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded pieces of the next raw chunk, each at most `piece` bytes."""
        yield from self._through(0, [data])

    def finish(self) -> Iterator[bytes]:
        """What is left once the body ended; raises if a coding stream is incomplete."""
        for index, layer in enumerate(self.layers):
            yield from self._through(index + 1, layer.finish())

    def _through(self, start: int, pieces: Iterator[bytes] | list[bytes]) -> Iterator[bytes]:
        if start == len(self.layers):
            yield from pieces
            return
        layer = self.layers[start]
        for piece in pieces:
            yield from self._through(start + 1, layer.feed(piece))
