"""One exception hierarchy for everything that can go wrong talking to Spine.

Mirrors spine-sdk's tree (so users of the SDK feel at home) and adds the two cases an
archiver must tell apart: a submit whose outcome is unknown (never retry it blindly: it
may have been billed) and an expired pre-signed download URL (fetch the run again for a
fresh one).
"""

from __future__ import annotations

from spine_pipeline.spine.redact import redact, redacted_field


class SpineError(Exception):
    """Base of every error raised by the Spine client. Messages are always redacted.

    So is the request id: it is whatever the server put in `X-Request-ID`, and a hostile or
    broken server may put the API key there. Redacting here, where every error is made,
    covers `str`, `repr`, logs and anything that stores the message.
    """

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        self.message = redact(message)
        self.request_id = redacted_field(request_id)
        super().__init__(self.message)

    def __str__(self) -> str:
        if self.request_id:
            return f"{self.message} (request id {self.request_id})"
        return self.message


class SpineConnectionError(SpineError):
    """The transport failed (refused, reset, DNS) after any retries."""


class SpineTimeoutError(SpineError):
    """A request, or a caller's deadline, ran out of time."""


class SpineAPIError(SpineError):
    """Spine answered, and the answer was an error (or not an answer we can read)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        request_id: str | None = None,
        response_body: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status_code = status_code
        self.error_message = self.message
        self.response_body = redact(response_body[:2000]) if response_body else None


class BadRequestError(SpineAPIError):
    """400: invalid template, blocks, or UUID."""


class AuthenticationError(SpineAPIError):
    """401: key missing, invalid or revoked."""


class NotFoundError(SpineAPIError):
    """404: no such run, canvas or task (or it belongs to another account)."""


class RateLimitError(SpineAPIError):
    """429 after the retry budget ran out."""


class ServerError(SpineAPIError):
    """5xx after the retry budget ran out."""


class MalformedResponseError(SpineAPIError):
    """A 2xx whose body is not the documented envelope (not JSON, not an object).

    `raw_body` is the exact body received, so an archive can keep what Spine sent; it is
    never part of the message (which is redacted and short, like every message).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        request_id: str | None = None,
        response_body: str | None = None,
        raw_body: bytes | None = None,
    ) -> None:
        super().__init__(
            message, status_code=status_code, request_id=request_id, response_body=response_body
        )
        self.raw_body = raw_body


class ResponseTooLargeError(SpineAPIError):
    """A reply whose body, once decoded, passed the client's cap: refused, not read further.

    A gzip bomb is small on the wire and huge inflated; the client stops inflating at the
    cap (`client.MAX_REPLY_BYTES`) instead of holding gigabytes. Persistent: the same reply
    would be refused again, so neither the client nor the archive repeats the request.
    """


class SubmitOutcomeUnknownError(SpineError):
    """POST /v1/run may or may not have created a (billable) run.

    Raised for any failure after the request may have reached Spine: a 5xx, a dropped
    connection, a read timeout, an unreadable 2xx. Never retried: record it and let a
    human reconcile, rather than risk paying twice.
    """

    def __init__(self, message: str, *, cause: str, request_id: str | None = None) -> None:
        super().__init__(message, request_id=request_id)
        self.cause = redact(cause)


class DownloadError(SpineError):
    """An artifact download failed: transport, truncated body, size mismatch."""


class DownloadExpiredError(DownloadError):
    """The pre-signed URL was refused (403/404/410): fetch the run again for a new one."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class DownloadRefusedError(DownloadError):
    """The pipeline itself refuses the download (URL policy, size cap): never retried."""


_STATUS_ERRORS: dict[int, type[SpineAPIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    429: RateLimitError,
}


def error_for_status(
    status_code: int,
    message: str,
    *,
    request_id: str | None = None,
    response_body: str | None = None,
) -> SpineAPIError:
    """Map an HTTP status to the matching exception class (like spine-sdk's map_http_error)."""
    cls = _STATUS_ERRORS.get(status_code)
    if cls is None:
        cls = ServerError if status_code >= 500 else SpineAPIError
    return cls(message, status_code=status_code, request_id=request_id, response_body=response_body)
