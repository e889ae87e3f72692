"""The results table: printed, and written into docs/benchmarks.md between markers.

Only the generated block is rewritten; the analysis around it (profiles, what dominates,
why a target is missed) is prose kept by hand in the same file.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import ROOT, Result, Row, machine

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- BEGIN GENERATED: make bench (benchmarks/report.py) -->"
END = "<!-- END GENERATED -->"
ORDER = ("poll", "burst", "audit", "memory", "verify", "time_to_audit", "ducklake")
#: Benchmarks run only when named (`make bench-scale`, `burst_big`); their latest rows stay
#: in the table.
EXTRA = ("scale", "burst_big")


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def _ratio(row: Row) -> str:
    r = row.ratio
    if r is None:
        return ""
    return f"{r:.1f}x faster" if row.ratio_kind == "speedup" else f"{r:.2f}x"


def _met(row: Row) -> str:
    return {True: "met", False: "**missed**", None: ""}[row.met]


def table(results: list[Result]) -> str:
    lines = [
        "| benchmark | measured (median) | baseline (median, same run) | ratio | runs | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for row in res.rows:
            base = f"{_fmt(row.baseline, row.unit)} {row.baseline_name}".strip()
            lines.append(
                f"| {row.name} | {_fmt(row.value, row.unit)} | {base} | {_ratio(row)} "
                f"| {row.runs} | {row.target} | {_met(row)} |"
            )
    return "\n".join(lines)


def facts(results: list[Result]) -> str:
    out = []
    for res in results:
        items = ", ".join(f"{k} = {v}" for k, v in res.facts.items())
        out.append(f"- **{res.benchmark}** ({res.seconds:.0f} s, {res.finished_at}): {items}")
        for row in res.rows:
            samples = ", ".join(_fmt(s, row.unit) for s in row.samples)
            base = ", ".join(_fmt(s, row.unit) for s in row.baseline_samples)
            out.append(
                f"  - {row.name}: samples [{samples}]" + (f"; baseline [{base}]" if base else "")
            )
    return "\n".join(out)


def render(results: list[Result], total_seconds: float | None) -> str:
    m = machine()
    spec = "\n".join(f"| {k} | {v} |" for k, v in m.items())
    took = f" The whole `make bench` took {total_seconds / 60:.1f} min." if total_seconds else ""
    return f"""{BEGIN}
Last run: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.{took}

| machine | |
|---|---|
{spec}

{table(results)}

Raw samples and workload facts:

{facts(results)}
{END}"""


def load_all() -> list[Result]:
    return [r for name in ORDER + EXTRA if (r := Result.load(name)) is not None]


def write_doc(results: list[Result], total_seconds: float | None, path: Path = DOC) -> None:
    block = render(results, total_seconds)
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
