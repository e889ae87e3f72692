"""The soak's output: the faults injected and survived, the figures, the checks (Markdown)."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from soak.check import Check
from soak.config import SoakConfig


@dataclass
class SoakReport:
    """Everything the soak measured; `ok` is the verdict."""

    config: SoakConfig
    seconds: float = 0.0
    checks: list[Check] = field(default_factory=list)
    api_faults: dict[str, int] = field(default_factory=dict)
    storage_faults: dict[str, int] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    kills: list[dict[str, Any]] = field(default_factory=list)
    sensor_restarts: list[dict[str, Any]] = field(default_factory=list)
    s3_restarts: list[dict[str, Any]] = field(default_factory=list)
    tick_seconds: list[float] = field(default_factory=list)
    failed_ticks: list[str] = field(default_factory=list)
    submissions: Counter[str] = field(default_factory=Counter)
    reconciled: Counter[str] = field(default_factory=Counter)
    archive_jobs: Counter[str] = field(default_factory=Counter)
    audit_jobs: Counter[str] = field(default_factory=Counter)
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)


_API_KINDS = (
    ("429", "429 with Retry-After: 0", "retried after Retry-After (create too: it never ran)"),
    ("503", "503 before any work", "GET retried with backoff; create recorded `unknown`"),
    ("500-after", "create: run made, then 500", "recorded `unknown`, never retried"),
    ("latency", "+200 ms before the answer", "absorbed (deadlines, concurrency)"),
    ("drop", "connection closed, no answer", "GET retried; create recorded `unknown`"),
    ("malformed", "200 with truncated JSON", "archiver re-reads; poll retries next tick"),
    ("expired", "download 403 AccessDenied", "run re-fetched for a fresh URL"),
    ("truncated", "download cut at half", "download retried, size checked"),
)


def _by_kind(counts: dict[str, int]) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for key, value in counts.items():
        if ":" in key:
            route, kind = key.split(":", 1)
            out.setdefault(kind, Counter())[route] += value
    return out


def _routes(counter: Counter[str] | None) -> str:
    if not counter:
        return "0"
    total = sum(counter.values())
    return f"{total} ({', '.join(f'{r} {n}' for r, n in sorted(counter.items()))})"


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def fault_table(report: SoakReport) -> list[str]:
    """Faults injected and survived: one row per fault kind, with where it hit."""
    survived = "yes" if report.ok else "NO"
    kinds = _by_kind(report.api_faults)
    lines = [
        _row("layer", "fault", "how injected", "injected", "handled by", "survived"),
        _row(*["---"] * 6),
    ]
    for kind, how, handled in _API_KINDS:
        lines.append(_row("Spine API", kind, how, _routes(kinds.get(kind)), handled, survived))
    storage = report.storage_faults
    if report.config.backend == "s3":
        lines.append(
            _row(
                "storage",
                "S3 503 SlowDown",
                "loopback proxy, 5 % of S3 requests",
                f"{storage.get('slowdown', 0)} of {storage.get('requests', 0)} requests",
                "boto3 standard retries; DuckDB httpfs retries",
                survived,
            )
        )
        outages = [r["outage_seconds"] for r in report.s3_restarts]
        lines.append(
            _row(
                "storage",
                "S3 server stopped + restarted mid-batch",
                "SeaweedFS SIGTERM/SIGKILL, then start",
                f"{len(outages)} (outages {', '.join(f'{o:g}s' for o in outages) or '-'}; "
                f"{storage.get('upstream_down', 0)} connections refused)",
                "retries; failed runs and ticks repeat later",
                survived,
            )
        )
    phases = Counter(k.get("phase", "?") for k in report.kills)
    lines.append(
        _row(
            "process",
            "archive worker SIGKILL mid-batch",
            "after a random delay or at its first data file",
            f"{len(report.kills)} ({'; '.join(f'{p}: {n}' for p, n in phases.items()) or '-'})",
            "run failed + slot freed (run monitoring); re-requested; gc removes garbage",
            survived,
        )
    )
    modes = Counter(r["mode"] for r in report.sensor_restarts)
    retried = sum(1 for r in report.sensor_restarts if r.get("attempts", 1) > 1)
    recovered = sum(1 for r in report.sensor_restarts if r.get("ok"))
    lines.append(
        _row(
            "process",
            "sensor process restarted",
            "tick in a fresh process; cursor kept / None / garbage",
            f"{len(report.sensor_restarts)} ({', '.join(f'{m} {n}' for m, n in modes.items())}); "
            f"{recovered} ticked ok in the fresh process, {retried} after a first tick stopped "
            "at its budget",
            "in-flight runs rebuilt from the ledger",
            survived,
        )
    )
    return lines


def figures_table(report: SoakReport) -> list[str]:
    f = report.figures
    subs = report.submissions
    ticks = report.tick_seconds
    jobs = report.archive_jobs
    job_seconds = [s for s in f.get("job_seconds", []) if s is not None]
    rows = [
        (
            "runs created in Spine / archived exactly once",
            f"{f.get('runs_created')} / {f.get('runs_archived')}",
        ),
        (
            "submit attempts: accepted / unknown / rejected / other failure",
            f"{subs['attempts']}: {subs['accepted']} / {subs['unknown']} / {subs['rejected']} / "
            f"{subs['failed_other']}",
        ),
        (
            "unknown outcomes reconciled",
            ", ".join(f"{k}: {v}" for k, v in report.reconciled.items()) or "-",
        ),
        (
            "archive runs: dispatched / succeeded / failed / killed",
            f"{jobs['dispatched']} / {jobs['succeeded']} / {jobs['failed']} / {jobs['killed']}",
        ),
        (
            "audit refresh runs: dispatched / succeeded / failed / killed",
            f"{report.audit_jobs['dispatched']} / {report.audit_jobs['succeeded']} / "
            f"{report.audit_jobs['failed']} / {report.audit_jobs['killed']}",
        ),
        (
            "archive and refresh run seconds: median / max",
            f"{statistics.median(job_seconds):.1f} / {max(job_seconds):.1f}"
            if job_seconds
            else "-",
        ),
        (
            "submit waves: count / median seconds",
            f"{len(f.get('wave_seconds', []))} / "
            f"{statistics.median(f.get('wave_seconds') or [0]):.1f}",
        ),
        ("manifests committed", f.get("manifests")),
        ("uncommitted objects removed by gc", f.get("gc_deleted")),
        (
            "sensor ticks: ok / failed; seconds median / max",
            f"{len(ticks)} / {len(report.failed_ticks)}; "
            + (f"{statistics.median(ticks):.2f} / {max(ticks):.2f}" if ticks else "-"),
        ),
        (
            "sensor ticks overlapping an S3 outage: count / max seconds",
            "{count} / {max_seconds:.2f}".format(**f["ticks_during_s3_outages"])
            if f.get("ticks_during_s3_outages")
            else "-",
        ),
        ("simulator requests served", f.get("requests_served")),
        ("wall time", f"{report.seconds:.0f} s"),
    ]
    return [_row("figure", "value"), _row("---", "---"), *(_row(k, v) for k, v in rows)]


def phases_table(report: SoakReport) -> list[str]:
    """Median / max seconds of each archive-run phase (from Dagster materialisation metadata)."""
    phases = report.figures.get("phase_seconds") or {}
    if not phases:
        return []
    lines = [_row("archive run phase", "runs", "median s", "max s"), _row(*["---"] * 4)]
    for name, values in sorted(phases.items()):
        lines.append(
            _row(name, len(values), f"{statistics.median(values):.2f}", f"{max(values):.2f}")
        )
    return lines


def s3_requests_table(report: SoakReport, top: int = 10) -> list[str]:
    """The S3 requests the pipeline made (through the proxy), by method and archive area."""
    kinds = {
        k.split(":", 1)[1]: v for k, v in report.storage_faults.items() if k.startswith("by_kind:")
    }
    if not kinds:
        return []
    total = sum(kinds.values())
    lines = [_row("S3 request (pipeline traffic)", "count", "share"), _row("---", "---", "---")]
    for kind, count in sorted(kinds.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(_row(f"`{kind}`", count, f"{count / total:.0%}"))
    lines.append(_row("all", total, "100%"))
    return lines


def notes(report: SoakReport) -> list[str]:
    """The first few errors the pipeline reported and survived (for the reader's judgement)."""
    f = report.figures
    items = [
        ("failed submit (not an API answer)", f.get("submit_other_errors", [])),
        ("failed sensor tick", report.failed_ticks),
        ("failed archive or audit refresh run", f.get("worker_errors", [])),
        ("worker crash", f.get("crashes", [])),
    ]
    lines = []
    for label, values in items:
        for value in list(dict.fromkeys(values))[:3]:
            lines.append(f"- {label}: `{str(value)[:240]}`")
    return ["Errors reported and survived (first 3 of each kind):", "", *lines] if lines else []


def checks_table(report: SoakReport) -> list[str]:
    lines = [_row("check", "result", "detail"), _row("---", "---", "---")]
    for check in report.checks:
        lines.append(_row(check.name, "pass" if check.ok else "FAIL", check.detail))
    if report.error:
        lines.append(_row("soak finished", "FAIL", report.error))
    return lines


def render(report: SoakReport) -> str:
    cfg = report.config
    title = (
        f"### Soak: {cfg.runs} runs, {cfg.backend} backend, faults at {cfg.fault_rate:.0%}, "
        f"seed {cfg.seed}: {'PASS' if report.ok else 'FAIL'}"
    )
    parts = [title, "", *fault_table(report), "", *figures_table(report), ""]
    if phases := phases_table(report):
        parts += [*phases, ""]
    if requests := s3_requests_table(report):
        parts += [*requests, ""]
    parts += [*checks_table(report), ""]
    if extra := notes(report):
        parts += [*extra, ""]
    return "\n".join(parts)
