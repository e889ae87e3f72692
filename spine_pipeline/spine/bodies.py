"""HTTP reply bodies read with a cap on their *decoded* size.

httpx decodes `Content-Encoding` itself, inflating each raw chunk it reads in one call with
no output limit: one 64 KiB chunk of a gzip bomb becomes about 64 MiB at once, and
`Content-Encoding: gzip, gzip` multiplies that again, so a 2 MB reply could hold gigabytes
before anyone can look at its size. Bodies are therefore read raw (`iter_raw`) and inflated
here with zlib's `max_length`, at most `PIECE` bytes at a time through every coding; the
body is refused (`BodyTooLarge`) as soon as its decoded size passes the limit, and nothing
more is read or inflated.

The codings are httpx's own, applied the same way (`gzip`; `deflate`, falling back to raw
deflate when the zlib header is missing; `identity` and unknown codings left as they are;
several codings undone last one first), and a corrupt stream raises `httpx.DecodingError`
as httpx does, so a body within the limit decodes to exactly the bytes it did before.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterable, Iterator

import httpx

__all__ = ["PIECE", "BodyTooLarge", "BoundedDecoder", "aread_capped", "read_capped"]

#: Most bytes one inflate step may produce: the memory a hostile coding costs beyond the cap.
PIECE = 1 << 20


class BodyTooLarge(Exception):
    """The decoded body passed `limit` bytes; reading stopped there."""

    def __init__(self, limit: int, status_code: int, headers: httpx.Headers) -> None:
        self.limit = limit
        self.status_code = status_code
        self.request_id = headers.get("x-request-id")
        self.content_encoding = headers.get("content-encoding")
        super().__init__(f"decoded body exceeds {limit} bytes")


class _Inflater:
    """One zlib coding, inflated at most `PIECE` bytes per step."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._first = True
        wbits = zlib.MAX_WBITS | 16 if coding == "gzip" else zlib.MAX_WBITS
        self._z = zlib.decompressobj(wbits)

    def feed(self, data: bytes) -> Iterator[bytes]:
        while True:
            try:
                out = self._z.decompress(data, PIECE)
            except zlib.error as exc:
                if self.coding == "deflate" and self._first:  # httpx: raw deflate, no header
                    self._first = False
                    self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise httpx.DecodingError(str(exc)) from exc
            self._first = False
            if out:
                yield out
            data = self._z.unconsumed_tail
            if not data and len(out) < PIECE:  # input used up and no output left pending
                return

    def feed_all(self, pieces: Iterable[bytes]) -> Iterator[bytes]:
        for piece in pieces:
            yield from self.feed(piece)

    def flush(self) -> Iterator[bytes]:
        try:
            out = self._z.flush()
        except zlib.error as exc:
            raise httpx.DecodingError(str(exc)) from exc
        if out:
            yield out


class BoundedDecoder:
    """Undo a reply's `Content-Encoding` lazily, counting decoded bytes against `limit`."""

    def __init__(self, status_code: int, headers: httpx.Headers, limit: int) -> None:
        codings = [
            c.strip().lower() for c in headers.get_list("content-encoding", split_commas=True)
        ]
        self._stages = [_Inflater(c) for c in reversed(codings) if c in ("gzip", "deflate")]
        self._status_code = status_code
        self._headers = headers
        self.limit = limit
        self.size = 0

    def _through(self, pieces: Iterable[bytes], first_stage: int) -> Iterator[bytes]:
        for stage in self._stages[first_stage:]:
            pieces = stage.feed_all(pieces)
        for piece in pieces:
            self.size += len(piece)
            if self.size > self.limit:
                raise BodyTooLarge(self.limit, self._status_code, self._headers)
            yield piece

    def decode(self, raw: bytes) -> Iterator[bytes]:
        """The decoded pieces of one raw chunk (raises `BodyTooLarge` past the limit)."""
        return self._through((raw,), 0)

    def flush(self) -> Iterator[bytes]:
        """What each coding still holds at the end of the body, through the codings after it."""
        for i, stage in enumerate(self._stages):
            yield from self._through(stage.flush(), i + 1)


def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The decoded body of a streamed response, refused past `limit` decoded bytes."""
    decoder = BoundedDecoder(response.status_code, response.headers, limit)
    pieces: list[bytes] = []
    for raw in response.iter_raw():
        pieces.extend(decoder.decode(raw))
    pieces.extend(decoder.flush())
    return b"".join(pieces)


async def aread_capped(response: httpx.Response, limit: int) -> bytes:
    """Async twin of `read_capped`."""
    decoder = BoundedDecoder(response.status_code, response.headers, limit)
    pieces: list[bytes] = []
    raw_chunks: AsyncIterator[bytes] = response.aiter_raw()
    async for raw in raw_chunks:
        pieces.extend(decoder.decode(raw))
    pieces.extend(decoder.flush())
    return b"".join(pieces)
