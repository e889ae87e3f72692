"""HTTP reply bodies read with a cap on their *decoded* size.

httpx decodes `Content-Encoding` itself, inflating each raw chunk it reads in one call with
no output limit: one 64 KiB chunk of a gzip bomb becomes about 64 MiB at once, and
`Content-Encoding: gzip, gzip` multiplies that again, so a 2 MB reply could hold gigabytes
before anyone can look at its size. Bodies are therefore read raw (`iter_raw`) and inflated
here with zlib's `max_length`, at most `PIECE` bytes at a time through every coding; the
body is refused (`BodyTooLarge`) as soon as its decoded size passes the limit, and nothing
more is read or inflated.

The decoding itself is `content_coding.StreamDecoder`, the one decoder of the project (the
artifact downloads use it too). Like httpx, codings other than gzip and deflate are left as
they are (the envelope parser then refuses the body), and a corrupt or cut-short stream
raises `httpx.DecodingError`, so the request flows treat it as the transport error it is.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import AsyncIterator, Iterator

import httpx

from spine_pipeline.spine.content_coding import ContentCodingError, StreamDecoder
from spine_pipeline.spine.redact import redacted_field

__all__ = [
    "FILE_BYTES",
    "PIECE",
    "BodyTooLarge",
    "BoundedDecoder",
    "aread_capped",
    "aread_raw_capped",
    "read_capped",
]

#: Most bytes one inflate step may produce: the memory a hostile coding costs beyond the cap.
PIECE = 1 << 20
#: A body past this many decoded bytes is gathered in a temporary file (`_Body`).
FILE_BYTES = 8 << 20
_DECODED = ("gzip", "x-gzip", "deflate")


class BodyTooLarge(Exception):
    """The decoded body passed `limit` bytes; reading stopped there."""

    def __init__(self, limit: int, status_code: int, headers: httpx.Headers) -> None:
        self.limit = limit
        self.status_code = status_code
        self.request_id = redacted_field(headers.get("x-request-id"))  # server-chosen
        self.content_encoding = headers.get("content-encoding")
        super().__init__(f"decoded body exceeds {limit} bytes")


class BoundedDecoder:
    """Undo a reply's `Content-Encoding` lazily, counting decoded bytes against `limit`."""

    def __init__(self, status_code: int, headers: httpx.Headers, limit: int) -> None:
        codings = [
            c.strip().lower() for c in headers.get_list("content-encoding", split_commas=True)
        ]
        try:
            self._decoder = StreamDecoder(", ".join(c for c in codings if c in _DECODED), PIECE)
        except ContentCodingError as exc:  # more layers than anyone sends
            raise httpx.DecodingError(str(exc)) from None
        self._status_code = status_code
        self._headers = headers
        self.limit = limit
        self.size = 0

    def _counted(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        try:
            for piece in pieces:
                self.size += len(piece)
                if self.size > self.limit:
                    raise BodyTooLarge(self.limit, self._status_code, self._headers)
                yield piece
        except ContentCodingError as exc:
            raise httpx.DecodingError(str(exc)) from None

    def decode(self, raw: bytes) -> Iterator[bytes]:
        """The decoded pieces of one raw chunk (raises `BodyTooLarge` past the limit)."""
        return self._counted(self._decoder.feed(raw))

    def flush(self) -> Iterator[bytes]:
        """What the codings still hold at the end of the body."""
        return self._counted(self._decoder.finish())


class _Body:
    """A body's decoded pieces; past `FILE_BYTES`, kept in a temporary file instead.

    Joining pieces held in a list needs the pieces and the result at once: two copies of a
    50 MiB body resident. Written to an unlinked temporary file as they come and read back
    whole (one `readall` into one `bytes`), the body is resident once; the pieces in between
    are in the page cache. Small bodies, the usual case, stay a list joined at the end. The
    file writes block the event loop of `aread_capped` for as long as a copy into the page
    cache takes (a big reply's pieces, not a small one's).
    """

    __slots__ = ("file", "pieces", "size")

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.size = 0
        self.file: io.FileIO | None = None

    def extend(self, pieces: Iterator[bytes]) -> None:
        for piece in pieces:
            if self.file is not None:
                self._write(piece)
                continue
            self.pieces.append(piece)
            self.size += len(piece)
            if self.size >= FILE_BYTES:
                try:
                    # closed by `close()`, which read_capped and aread_capped always call
                    self.file = tempfile.TemporaryFile(prefix="spine-body-", buffering=0)  # noqa: SIM115
                except OSError as exc:
                    raise httpx.ReadError(f"reply body: no temporary file ({exc})") from None
                for held in self.pieces:
                    self._write(held)
                self.pieces = []

    def _write(self, piece: bytes) -> None:
        assert self.file is not None
        try:
            view = memoryview(piece)
            while view:
                view = view[self.file.write(view) :]
        except OSError as exc:  # a full TMPDIR: the transport error it is for the flows
            self.close()
            raise httpx.ReadError(f"reply body: temporary file ({exc})") from None

    def value(self) -> bytes:
        if self.file is None:
            return b"".join(self.pieces)
        try:
            self.file.seek(0)
            return self.file.readall()
        finally:
            self.close()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The decoded body of a streamed response, refused past `limit` decoded bytes."""
    decoder = BoundedDecoder(response.status_code, response.headers, limit)
    body = _Body()
    try:
        for raw in response.iter_raw():
            body.extend(decoder.decode(raw))
        body.extend(decoder.flush())
        return body.value()
    finally:
        body.close()


async def aread_capped(response: httpx.Response, limit: int) -> bytes:
    """Async twin of `read_capped`."""
    return await aread_raw_capped(
        response.aiter_raw(), response.status_code, response.headers, limit
    )


async def aread_raw_capped(
    raw_chunks: AsyncIterator[bytes], status: int, headers: httpx.Headers, limit: int
) -> bytes:
    """The decoded body of raw (still content-coded) chunks, refused past `limit` decoded
    bytes: `aread_capped` without the httpx response, for the client's direct aiohttp GET."""
    decoder = BoundedDecoder(status, headers, limit)
    body = _Body()
    try:
        async for raw in raw_chunks:
            body.extend(decoder.decode(raw))
        body.extend(decoder.flush())
        return body.value()
    finally:
        body.close()
