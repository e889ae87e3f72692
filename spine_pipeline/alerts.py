"""Alerts to a Slack-compatible incoming webhook (`SPINE_ALERT_WEBHOOK_URL`).

A plain library (no Dagster): `defs/alert_sensor.py` decides what to say and remembers what
it said; this module shapes one message and delivers it.

The message is what Slack's incoming webhooks accept, and what Mattermost, Rocket.Chat,
Discord's `/slack` endpoint and most chat bridges accept too: `{"text": ..., "blocks":
[...]}`, `text` being the plain fallback shown in notifications.

Delivery is bounded: each attempt has a short timeout, a few attempts with backoff on what
may pass (a connection error, a timeout, 429, 5xx), none on other 4xx (a revoked or wrong
URL does not get better). The URL's path and query are the credential of a Slack webhook,
so errors and logs name only its origin (scheme, host, port), and never an exception's own
text, which may quote the URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

#: Seconds for each attempt (connect, write, read): a sensor tick must not hang on a sink.
TIMEOUT_SECONDS = 5.0
ATTEMPTS = 3
BACKOFF_SECONDS = 0.5  # then doubled
#: Alerts listed in one message; the rest are counted ("... and N more").
LISTED = 20
_SECTION_CHARS = 2900  # Slack's section text limit is 3000
_HEADER_CHARS = 150  # Slack's header text limit


class AlertSendError(Exception):
    """The message was not delivered; the text names only the URL's origin."""


@dataclass(frozen=True)
class Alert:
    """One thing to tell people; `key` identifies it, so it is sent once."""

    key: str
    severity: str  # "ERROR" or "WARN"
    title: str
    detail: str


def origin(url: str) -> str:
    """`scheme://host[:port]` of `url`: what may be shown of a webhook URL."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def _escape(text: str) -> str:
    """Slack's escaping: `&`, `<`, `>` are control characters there (`<!channel>` pings a
    channel, `<url|label>` disguises a link), so text from a check or a run name is shown,
    never interpreted."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def slack_message(alerts: Sequence[Alert], source: str = "spine-pipeline") -> dict[str, Any]:
    """One Slack-compatible message for `alerts` (at least one), errors first."""
    ordered = [
        Alert(a.key, a.severity, _escape(a.title), _escape(a.detail))
        for a in sorted(alerts, key=lambda a: (a.severity != "ERROR", a.key))
    ]
    errors = sum(a.severity == "ERROR" for a in ordered)
    title = f"{_escape(source)}: {len(ordered)} alert(s)" + (
        f", {errors} error(s)" if errors else ""
    )
    lines = [f"*[{a.severity}] {a.title}*\n{a.detail}" for a in ordered[:LISTED]]
    if len(ordered) > LISTED:
        lines.append(f"... and {len(ordered) - LISTED} more")
    text = "\n".join(f"[{a.severity}] {a.title}: {a.detail}" for a in ordered[:LISTED])
    return {
        "text": _cut(f"{title}\n{text}", 4000),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": _cut(title, _HEADER_CHARS)}},
            *(
                {"type": "section", "text": {"type": "mrkdwn", "text": _cut(line, _SECTION_CHARS)}}
                for line in lines
            ),
        ],
    }


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def post_alert(
    url: str,
    message: dict[str, Any],
    *,
    timeout: float | None = None,
    attempts: int | None = None,
    backoff: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """POST `message` as JSON to `url`; `AlertSendError` if no attempt got a 2xx.

    Unset arguments take the module's values when called (not when defined), so one place
    tunes them for the sensor.
    """
    timeout = TIMEOUT_SECONDS if timeout is None else timeout
    attempts = ATTEMPTS if attempts is None else attempts
    backoff = BACKOFF_SECONDS if backoff is None else backoff
    where = origin(url)
    problem = "not attempted"
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for attempt in range(attempts):
            if attempt:
                sleep(backoff * 2 ** (attempt - 1))
            try:
                response = client.post(url, json=message)
            except httpx.HTTPError as exc:  # its text may quote the URL: name the type only
                problem = type(exc).__name__
                continue
            if response.is_success:
                return
            problem = f"HTTP {response.status_code}"
            if not _retryable(response.status_code):
                break
    raise AlertSendError(f"alert webhook {where} not delivered: {problem}")
