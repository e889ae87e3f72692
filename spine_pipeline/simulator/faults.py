"""Fault injection: which rule fires for a request, with a seeded RNG and per-kind counters."""

from __future__ import annotations

import random
import re
import threading
from collections import Counter
from dataclasses import dataclass

from .config import FaultRule, parse_faults

_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(r"^/v1/run/?$"), "create"),
    ("GET", re.compile(r"^/v1/run/[^/]+/?$"), "get"),
    ("GET", re.compile(r"^/v1/canvas/[^/]+/dag/?$"), "dag"),
    ("GET", re.compile(r"^/v1/canvas/[^/]+/tasks/?$"), "tasks"),
    ("GET", re.compile(r"^/v1/canvas/[^/]+/tasks/[^/]+/?$"), "task"),
    ("GET", re.compile(r"^/files/[^/]+$"), "download"),
)


def classify_route(method: str, path: str) -> str | None:
    """Map a request to a fault route name (None for admin and unknown paths)."""
    if method == "HEAD":
        method = "GET"
    for want, pattern, name in _ROUTES:
        if method == want and pattern.match(path):
            return name
    return None


@dataclass(frozen=True)
class FaultDecision:
    """What to do with one request: total injected latency, then at most one other fault."""

    latency_ms: float = 0.0
    rule: FaultRule | None = None


NO_FAULT = FaultDecision()


class FaultInjector:
    """Holds the active rules; ``decide`` is called once per request.

    Rules are evaluated in spec order: every firing ``latency`` rule adds its delay, and the first
    other rule that fires decides the fault. ``xN`` rules stop after N firings; ``@P`` rules fire
    with probability P from an RNG seeded by the world seed (deterministic for a sequential client).
    """

    def __init__(self, spec: str, seed: int, counts: Counter[str]) -> None:
        self._lock = threading.Lock()
        self._seed = seed
        self._rng = random.Random(f"{seed}:faults")
        self.counts = counts
        self._rules: list[FaultRule] = []
        self._remaining: list[int | None] = []
        self.spec = ""
        self.set_spec(spec)

    def set_spec(self, spec: str | None) -> None:
        """Replace the active rules (validates first; ``xN`` budgets restart)."""
        rules = parse_faults(spec)
        with self._lock:
            self._rules = rules
            self._remaining = [rule.count for rule in rules]
            self.spec = spec or ""

    @property
    def rules(self) -> list[FaultRule]:
        """The active rules, in evaluation order."""
        return list(self._rules)

    def decide(self, route: str | None) -> FaultDecision:
        """Pick the faults for one request on ``route`` and count them."""
        if route is None or not self._rules:
            return NO_FAULT
        latency = 0.0
        chosen: FaultRule | None = None
        with self._lock:
            for index, rule in enumerate(self._rules):
                if not rule.applies_to(route):
                    continue
                if rule.kind != "latency" and chosen is not None:
                    continue
                remaining = self._remaining[index]
                if remaining is not None and remaining <= 0:
                    continue
                if rule.probability is not None and self._rng.random() >= rule.probability:
                    continue
                if remaining is not None:
                    self._remaining[index] = remaining - 1
                self.counts[rule.kind] += 1
                self.counts[f"{route}:{rule.kind}"] += 1
                if rule.kind == "latency":
                    latency += rule.latency_ms
                else:
                    chosen = rule
        return FaultDecision(latency, chosen)

    def decide_keyed(
        self, route: str, key: str, kinds: frozenset[str] | None = None
    ) -> tuple[float, FaultRule | None]:
        """Faults for one webhook event: the summed ``delay`` seconds and at most one other rule.

        Unlike :meth:`decide`, each ``@P`` draw is a pure function of (seed, rule, ``key``), so
        the outcome does not depend on which background delivery happens to be decided first,
        and webhook decisions never shift the request RNG. ``kinds`` limits the candidates (an
        ``out-of-order`` rule only means something for ``run.started``).
        """
        delay = 0.0
        chosen: FaultRule | None = None
        with self._lock:
            for index, rule in enumerate(self._rules):
                if not rule.applies_to(route) or (kinds is not None and rule.kind not in kinds):
                    continue
                if rule.kind != "delay" and chosen is not None:
                    continue
                remaining = self._remaining[index]
                if remaining is not None and remaining <= 0:
                    continue
                if rule.probability is not None:
                    draw = random.Random(f"{self._seed}:{route}:{index}:{rule.text}:{key}")
                    if draw.random() >= rule.probability:
                        continue
                if remaining is not None:
                    self._remaining[index] = remaining - 1
                self.counts[rule.kind] += 1
                self.counts[f"{route}:{rule.kind}"] += 1
                if rule.kind == "delay":
                    delay += rule.delay_seconds
                else:
                    chosen = rule
        return delay, chosen
