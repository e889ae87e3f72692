"""Keep secrets out of every message, repr and log line (design invariant 5).

Two layers: every secret the process knows about is registered here and replaced
wherever it appears, and anything shaped like a Spine key is masked even if it was
never registered (a server may echo a key back in an error message).

A registered secret is masked in the forms a server is likely to echo it in: as given,
JSON-escaped, percent-encoded, and (for a Spine key) its random part alone. A key of any
shape is registered as soon as the client wraps it in a `Secret`, so a key that does not
look like `sk_spine_...` is masked too.

Strings a server chose (a header such as `X-Request-ID`, an error message) are redacted
where they enter the process (`redacted_field`, `RedactedError`, the Spine error classes),
so code that later formats them cannot forget.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from urllib.parse import quote

_SPINE_KEY = re.compile(r"sk_spine_[A-Za-z0-9_\-]+")
_SPINE_PREFIX = "sk_spine_"
_MASK = "***"
_MIN_SECRET = 4
_MIN_TAIL = 16  # a Spine key's random part is masked alone only when this long (not "simulator")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_lock = threading.Lock()
_secrets: set[str] = set()


def _forms(value: str) -> set[str]:
    """The spellings of a secret a server may echo: raw, JSON-escaped, percent-encoded."""
    forms = {value, json.dumps(value)[1:-1], quote(value, safe="")}
    if value.startswith(_SPINE_PREFIX) and len(value) - len(_SPINE_PREFIX) >= _MIN_TAIL:
        forms.add(value[len(_SPINE_PREFIX) :])
    return {f for f in forms if len(f) >= _MIN_SECRET}


def register_secret(value: str | None) -> None:
    """Remember a secret so that `redact` removes it from any text."""
    if value and len(value) >= _MIN_SECRET:
        forms = _forms(value)
        with _lock:
            _secrets.update(forms)


def redact(text: str) -> str:
    """Return `text` with every known secret and every Spine-key-shaped token masked."""
    if not text:
        return text
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, _MASK)
    return _SPINE_KEY.sub(_MASK, text)


def redacted_field(value: str | None, limit: int = 200) -> str | None:
    """A short server-chosen string (a header value, an id) fit for a message.

    Redacted, control characters replaced by a space (one line) and cut to `limit`
    characters: a hostile `X-Request-ID` can neither leak a key nor flood a log line.
    """
    if value is None:
        return None
    clean = _CONTROL.sub(" ", redact(value))
    return clean if len(clean) <= limit else clean[:limit] + "...(cut)"


#: Loggers of the HTTP stack that print what a server sent: httpx logs every response's
#: status line (its reason phrase is the server's text), httpcore every response header.
HTTP_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


class RedactingFilter(logging.Filter):
    """Masks secrets in every record of the logger it is attached to (before any handler).

    The message and the traceback: handlers format `exc_text` when it is set, so the
    traceback is formatted here once, redacted, and kept there.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def redact_http_logs() -> None:
    """Attach a `RedactingFilter` to the HTTP stack's loggers (once; idempotent).

    The libraries log a reply as they read it, before the client sees it: their records
    are the one place where a server's status line and headers reach a log unredacted.
    """
    for name in HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


class RedactedError(Exception):
    """An exception whose message is redacted when it is made.

    For exceptions that carry text from outside (a run's status, a canvas id, the text of
    another error): whatever later prints, logs or stores `str(exc)` gets the redacted text.
    """

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class Secret:
    """A string that never shows itself: repr, str and format all print a mask."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")
