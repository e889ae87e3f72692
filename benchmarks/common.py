"""Timing, results and the machine description shared by every benchmark.

A result row is a measured figure and its baseline, both medians of repetitions taken in
the same process on the same machine, interleaved (measured, baseline, measured, ...), so
that drift on a noisy machine hits both sides alike. The ratio is what counts.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"  # gitignored: caches, scratch archives, raw results
RESULTS_DIR = BENCH_DIR / "results"


@dataclass
class Row:
    """One line of the table.

    `value` and `baseline` are medians in `unit`; `ratio` is baseline / value for "faster
    than" targets (`ratio_kind="speedup"`) and value / baseline for "at most N x" targets
    (`ratio_kind="overhead"`). `target` is the text of the issue's target; `met` is None
    when the row is informational.
    """

    benchmark: str
    name: str
    value: float
    unit: str = "s"
    baseline: float | None = None
    baseline_name: str = ""
    ratio_kind: str = ""
    target: str = ""
    met: bool | None = None
    runs: int = 0
    samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.value or not self.baseline:
            return None
        if self.ratio_kind == "speedup":
            return self.baseline / self.value
        return self.value / self.baseline


@dataclass
class Result:
    """Everything one benchmark produced: rows plus free-form facts (counts, sizes)."""

    benchmark: str
    rows: list[Row] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    finished_at: str = ""

    def save(self) -> Path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.benchmark}.json"
        path.write_text(json.dumps(asdict(self), indent=1, default=str))
        return path

    @classmethod
    def load(cls, name: str) -> Result | None:
        path = RESULTS_DIR / f"{name}.json"
        if not path.exists():
            return None
        doc = json.loads(path.read_text())
        rows = [Row(**r) for r in doc.pop("rows")]
        return cls(rows=rows, **doc)


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, return value) of one call, on the monotonic high-resolution clock."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def interleave(
    measured: Callable[[], float], baseline: Callable[[], float], reps: int
) -> tuple[list[float], list[float]]:
    """Alternate measured/baseline `reps` times; each callable returns its own seconds."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(reps):
        a.append(measured())
        b.append(baseline())
    return a, b


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def rss_mb(pid: int | None = None) -> float:
    """Current resident set size of a process (this one by default), in MiB."""
    with open(f"/proc/{pid or os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> dict[str, str]:
    """What the figures were measured on (goes into docs/benchmarks.md)."""
    import duckdb
    import httpx
    import pyarrow

    model = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as fh:
            kib = int(fh.readline().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    try:
        import dagster

        dagster_version = dagster.__version__
    except ImportError:  # pragma: no cover
        dagster_version = "?"
    return {
        "cpus (nproc)": str(os.cpu_count()),
        "cpu model (lscpu)": model,
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "pyarrow": pyarrow.__version__,
        "httpx": httpx.__version__,
        "dagster": dagster_version,
    }
