"""Simulator configuration and the parsers for its string forms (CLI flags, fault specs).

Every parser raises ``ValueError`` with a one-line message so the CLI can print it as is.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

FAULT_ROUTES: tuple[str, ...] = (
    "create",
    "get",
    "dag",
    "tasks",
    "task",
    "download",
    "webhook",
    "*",
)
API_ROUTES: frozenset[str] = frozenset({"create", "get", "dag", "tasks", "task"})
ALL_ROUTES: frozenset[str] = API_ROUTES | {"download"}
"""The HTTP routes; ``*`` matches only these (webhook deliveries need explicit rules)."""
WEBHOOK: frozenset[str] = frozenset({"webhook"})

FAULT_KINDS: dict[str, frozenset[str]] = {
    "429": ALL_ROUTES,
    "500": ALL_ROUTES,
    "502": ALL_ROUTES,
    "503": ALL_ROUTES,
    "500-after": frozenset({"create"}),
    "drop": ALL_ROUTES | WEBHOOK,
    "latency": ALL_ROUTES,
    "malformed": API_ROUTES,
    "false200": API_ROUTES,
    "expired": frozenset({"download"}),
    "truncated": frozenset({"download"}),
    "unknown-status": frozenset({"get"}),
    "duplicate": WEBHOOK,
    "out-of-order": WEBHOOK,
    "delay": WEBHOOK,
    "resend": WEBHOOK,
    "bad-signature": WEBHOOK,
}
"""Fault kind -> the routes it can apply to (a ``*`` rule only matches those)."""

_TAIL_RE = re.compile(r"^(?:=(?P<arg>[^@x]*))?(?:@(?P<prob>[^@x]*)|x(?P<count>[^@x]*))?$")
_KINDS_LONGEST_FIRST = sorted(FAULT_KINDS, key=len, reverse=True)


@dataclass(frozen=True)
class FaultRule:
    """One parsed fault rule ``ROUTE:KIND[=ARG][@PROB|xCOUNT]``."""

    route: str
    kind: str
    arg: str | None = None
    probability: float | None = None
    count: int | None = None
    text: str = ""

    def applies_to(self, route: str) -> bool:
        """True when this rule can fire for a request classified as ``route``."""
        if self.route not in ("*", route):
            return False
        if self.route == "*" and route not in ALL_ROUTES:
            return False
        return route in FAULT_KINDS[self.kind]

    @property
    def retry_after(self) -> str:
        """Retry-After value for 429 rules: seconds (default 1) or the literal ``date``."""
        return self.arg if self.arg else "1"

    @property
    def latency_ms(self) -> float:
        """Delay for ``latency`` rules, in milliseconds (default 100)."""
        return float(self.arg) if self.arg else 100.0

    @property
    def delay_seconds(self) -> float:
        """Delay for webhook ``delay`` rules, in seconds (default 5)."""
        return float(self.arg) if self.arg else 5.0


def parse_faults(spec: str | None) -> list[FaultRule]:
    """Parse a comma-separated fault spec; ``""``/``None`` means no faults."""
    rules: list[FaultRule] = []
    if not spec:
        return rules
    for raw in spec.split(","):
        text = raw.strip()
        if not text:
            continue
        route, sep, rest = text.partition(":")
        route = route.strip()
        if not sep:
            raise ValueError(f"fault rule '{text}' must look like ROUTE:KIND[=ARG][@PROB|xCOUNT]")
        if route not in FAULT_ROUTES:
            raise ValueError(
                f"unknown fault route '{route}' in rule '{text}' "
                f"(expected one of {', '.join(FAULT_ROUTES)})"
            )
        kind, tail = _split_kind(rest.strip(), text)
        match = _TAIL_RE.match(tail)
        if match is None:
            raise ValueError(
                f"cannot parse fault rule '{text}': expected ROUTE:KIND[=ARG][@PROB|xCOUNT]"
            )
        if route != "*" and route not in FAULT_KINDS[kind]:
            allowed = ", ".join(sorted(FAULT_KINDS[kind]))
            raise ValueError(
                f"fault kind '{kind}' does not apply to route '{route}' (only {allowed})"
            )
        arg = match["arg"]
        _check_arg(kind, arg, text)
        probability = None
        if match["prob"] is not None:
            try:
                probability = float(match["prob"])
            except ValueError:
                probability = math.nan
            if not 0.0 < probability <= 1.0:
                raise ValueError(
                    f"invalid probability '{match['prob']}' in rule '{text}' (0 < p <= 1)"
                )
        count = None
        if match["count"] is not None:
            if not match["count"].isdigit() or int(match["count"]) < 1:
                raise ValueError(f"invalid count 'x{match['count']}' in rule '{text}' (xN, N >= 1)")
            count = int(match["count"])
        rules.append(FaultRule(route, kind, arg or None, probability, count, text))
    return rules


def _split_kind(rest: str, text: str) -> tuple[str, str]:
    """Split ``KIND...`` into a known kind and the ``=ARG@PROB`` / ``xN`` tail."""
    for kind in _KINDS_LONGEST_FIRST:
        if rest.startswith(kind) and rest[len(kind) : len(kind) + 1] in ("", "=", "@", "x"):
            return kind, rest[len(kind) :]
    unknown = re.split(r"[=@]", rest, maxsplit=1)[0]
    raise ValueError(f"unknown fault kind '{unknown}' in rule '{text}'")


def _check_arg(kind: str, arg: str | None, text: str) -> None:
    if arg is None:
        return
    if kind == "429":
        if arg == "date" or (arg.isdigit() and int(arg) >= 0):
            return
        raise ValueError(
            f"invalid argument '{arg}' for fault kind '429' in rule '{text}' (seconds or 'date')"
        )
    if kind in ("latency", "delay"):
        try:
            value = float(arg)
        except ValueError:
            value = -1.0
        if value >= 0 and math.isfinite(value):
            return
        unit = "milliseconds" if kind == "latency" else "seconds"
        raise ValueError(
            f"invalid argument '{arg}' for fault kind '{kind}' in rule '{text}' ({unit} >= 0)"
        )
    raise ValueError(f"fault kind '{kind}' takes no argument (rule '{text}')")


def parse_run_seconds(text: str) -> tuple[float, float]:
    """Parse ``MIN:MAX`` (or a single ``N``) run duration bounds, in seconds."""
    parts = text.strip().split(":")
    try:
        if len(parts) == 1:
            low = high = float(parts[0])
        elif len(parts) == 2:
            low, high = float(parts[0]), float(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"invalid run seconds '{text}': expected MIN:MAX, e.g. 3:8") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high < low:
        raise ValueError(f"invalid run seconds '{text}': need 0 <= MIN <= MAX")
    return (low, high)


def random_seed() -> int:
    """A fresh world seed: the default, so that every simulator session hands out new run ids.

    Why not a fixed default: run ids are a function of the seed, and an archive remembers the
    ids it holds. A simulator restarted with the same seed hands out the same ids for new runs,
    which an archive that already holds them must refuse (`archiver`). Tests and benchmarks
    that need the same world again pass a seed.
    """
    return secrets.randbelow(2**31)


@dataclass
class SimulatorConfig:
    """Everything that shapes a simulated Spine world; same config + same requests = same world.

    Without a `seed`, a random one is drawn once, here, and kept in the config (servers print
    it), so a session can be replayed with `--seed`.
    """

    seed: int = field(default_factory=random_seed)
    run_seconds: tuple[float, float] = (3.0, 8.0)
    api_key: str = "sk_spine_simulator"
    url_ttl_seconds: float = 600.0
    faults: str = ""
    canvas_id_on_create_rate: float = 0.7
    artifact_size_scale: float = 1.0
    big_artifact_mb: float = 200.0
    huge_content_mib: float = 20.0
    """Size of the one block of a ``huge-content`` run (UTF-8 bytes, in MiB)."""
    outcome_weights: tuple[float, float, float] = (0.75, 0.15, 0.10)
    """Relative weights of completed, partial and failed outcomes."""
    artifact_cache_mb: float = 512.0
    """Bound on cached artifact bytes; evicted artifacts are regenerated deterministically."""
    webhook_url: str = ""
    """Where to POST signed webhook deliveries; empty means no webhooks (see webhooks.py)."""
    webhook_secret: str = ""
    """The ``whsec_...`` signing secret; required with ``webhook_url`` (never logged)."""
    webhook_timeout_seconds: float = 5.0
    """Per-attempt delivery timeout."""
    webhook_max_attempts: int = 5
    """Attempts per delivery (the first one included) before it is recorded as failed."""
    webhook_backoff_seconds: float = 1.0
    """Wait before the first retry; doubles on each further retry (capped at 60 s)."""

    def __post_init__(self) -> None:
        if isinstance(self.run_seconds, str):
            self.run_seconds = parse_run_seconds(self.run_seconds)
        low, high = (float(x) for x in self.run_seconds)
        if low < 0 or high < low:
            raise ValueError(f"invalid run_seconds {self.run_seconds!r}: need 0 <= MIN <= MAX")
        self.run_seconds = (low, high)
        parse_faults(self.faults)  # fail early on a bad spec
        if not self.api_key:
            raise ValueError("api_key must be non-empty")
        if self.url_ttl_seconds <= 0:
            raise ValueError("url_ttl_seconds must be > 0")
        if not 0.0 <= self.canvas_id_on_create_rate <= 1.0:
            raise ValueError("canvas_id_on_create_rate must be within [0, 1]")
        if self.artifact_size_scale <= 0 or self.big_artifact_mb <= 0:
            raise ValueError("artifact_size_scale and big_artifact_mb must be > 0")
        if not (math.isfinite(self.huge_content_mib) and self.huge_content_mib > 0):
            raise ValueError("huge_content_mib must be > 0")
        weights = tuple(float(w) for w in self.outcome_weights)
        if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                "outcome_weights must be three non-negative numbers with a positive sum"
            )
        self.outcome_weights = weights
        self._check_webhooks()

    def _check_webhooks(self) -> None:
        if self.webhook_url:
            try:
                parts = urlsplit(self.webhook_url)
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError:
                parts = urlsplit("")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("webhook_url must be an http:// or https:// URL with a host")
            if not self.webhook_secret:
                raise ValueError("webhook_url needs a webhook_secret")
        elif self.webhook_secret:
            raise ValueError("webhook_secret is set but webhook_url is not")
        if not (math.isfinite(self.webhook_timeout_seconds) and self.webhook_timeout_seconds > 0):
            raise ValueError("webhook_timeout_seconds must be > 0")
        if self.webhook_max_attempts < 1:
            raise ValueError("webhook_max_attempts must be >= 1")
        if not (math.isfinite(self.webhook_backoff_seconds) and self.webhook_backoff_seconds >= 0):
            raise ValueError("webhook_backoff_seconds must be >= 0")

    def __repr__(self) -> str:
        # Never show the API key (it ends up in logs and tracebacks otherwise).
        return (
            f"SimulatorConfig(seed={self.seed}, run_seconds={self.run_seconds}, api_key='***', "
            f"url_ttl_seconds={self.url_ttl_seconds}, faults={self.faults!r}, "
            f"canvas_id_on_create_rate={self.canvas_id_on_create_rate}, "
            f"artifact_size_scale={self.artifact_size_scale}, "
            f"big_artifact_mb={self.big_artifact_mb}, "
            f"huge_content_mib={self.huge_content_mib}, "
            f"outcome_weights={self.outcome_weights}, "
            f"webhook_url={redact_url(self.webhook_url)!r}, "
            f"webhook_secret={'***' if self.webhook_secret else ''!r})"
        )


def redact_url(url: str) -> str:
    """A URL without user info, query or fragment (they may carry tokens), for logs and reprs."""
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
