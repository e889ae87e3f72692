"""Benchmark 4: peak memory of archiving one run with a big artifact and a big block.

Two cases, each in its own simulator: a 200 MB artifact with a 20 MiB block (the usual
`big-artifact` + `huge-content` run), and a 1 GiB artifact with a 50 MiB block (issue 20:
within +100 MB too, so memory does not grow with the artifact, and what the block costs
shows). `--quick` keeps only a smaller first case.

Each repetition runs in a fresh child process: it imports everything, records its resident
set size (the process baseline), archives the run with the real `Archiver` into a fresh
archive, and reports its peak RSS (`VmHWM`, the kernel's high-water mark for this process
image) minus the baseline. The simulator (another process) streams the 200 MB PNG
without holding it. One more child, not among the samples, runs under tracemalloc and
reports the peak of Python-level allocations (`python_peak_mb`: what `str`/`bytes`/parsed
values cost; Arrow and Parquet buffers are outside it), to tell the two kinds of memory apart.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH_DIR, ROOT, Result, Row, median, rss_mb, say
from benchmarks.sim import SimProcess
from spine_pipeline.simulator import SimulatorConfig

LIMIT_MB = 100.0


def _hwm_mb() -> float:
    """Peak RSS of this process image (VmHWM), in MiB.

    Not `ru_maxrss`: Linux carries it across fork+exec, so a child of a large parent starts
    with the parent's peak (a 3 GB parent made a 540 MB figure read 3,139 MB).
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _child(base_url: str, api_key: str, run_id: str, archive: str, trace: str = "") -> None:
    """Archive one run in this process; print baseline and peak RSS as JSON."""
    import tracemalloc

    from spine_pipeline.archive.archiver import Archiver
    from spine_pipeline.archive.stores import open_store
    from spine_pipeline.spine import AsyncSpineClient

    store = open_store(archive)
    baseline = rss_mb()
    peak_before = _hwm_mb()
    if trace:
        tracemalloc.start()
    result = Archiver(store, lambda: AsyncSpineClient(api_key=api_key, base_url=base_url)).archive(
        [run_id]
    )
    peak = _hwm_mb()
    python_peak = tracemalloc.get_traced_memory()[1] / (1 << 20) if trace else None
    outcome = result.outcomes[0]
    print(
        json.dumps(
            {
                "baseline_mb": baseline,
                "peak_before_mb": peak_before,
                "peak_mb": peak,
                "python_peak_mb": python_peak,
                "outcome": outcome.outcome,
                "message": outcome.message,
                "artifacts": outcome.artifact_count,
            }
        )
    )


def _run_child(sim: SimProcess, run_id: str, work: Path, trace: bool = False) -> dict[str, Any]:
    """One fresh child process archiving the run into a fresh archive; its JSON report."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    args = [sim.base_url, sim.api_key, run_id, str(work / "archive")] + (["trace"] if trace else [])
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    doc: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if doc["outcome"] != "archived":
        raise RuntimeError(f"memory run not archived: {doc}")
    return doc


#: (artifact MB, block MiB) of each case; the second is issue 20's.
CASES = ((200.0, 20.0), (1024.0, 50.0))


def run(reps: int = 5, quick: bool = False) -> Result:
    result = Result("memory")
    for big_mb, block_mib in ((50.0, 20.0),) if quick else CASES:
        _case(result, reps, big_mb, block_mib)
    return result


def _case(result: Result, reps: int, big_mb: float, block_mib: float) -> None:
    config = SimulatorConfig(
        seed=5, run_seconds=(0.05, 0.05), big_artifact_mb=big_mb, huge_content_mib=block_mib
    )
    work = BENCH_DIR / "scratch" / "memory"
    samples: list[float] = []
    tag = "" if (big_mb, block_mib) == CASES[0] else f"_{big_mb:.0f}mb"
    with SimProcess(config) as sim:
        (run_id,) = sim.create_runs(
            1, prompt="Memory {i} [scenario:big-artifact] [scenario:huge-content]"
        )
        sim.finish_all()
        for _ in range(reps):
            doc = _run_child(sim, run_id, work)
            growth = doc["peak_mb"] - doc["baseline_mb"]
            samples.append(growth)
            result.facts[f"process_baseline_mb{tag}"] = round(doc["baseline_mb"], 1)
            result.facts[f"artifacts{tag}"] = doc["artifacts"]
            say(f"memory: peak {doc['peak_mb']:.0f} MB, baseline {doc['baseline_mb']:.0f} MB")
        traced = _run_child(sim, run_id, work, trace=True)
        result.facts[f"python_peak_mb{tag}"] = round(traced["python_peak_mb"], 1)
    shutil.rmtree(work, ignore_errors=True)
    result.facts[f"big_artifact_mb{tag}"] = big_mb
    result.facts[f"big_block_mib{tag}"] = block_mib
    size = f"{big_mb / 1024:g} GiB" if big_mb >= 1024 else f"{big_mb:.0f} MB"
    result.rows.append(
        Row(
            "memory",
            f"peak RSS above baseline, archiving one run ({size} artifact, "
            f"{block_mib:g} MiB block)",
            median(samples),
            unit="MB",
            target=f"<= {LIMIT_MB:.0f} MB",
            met=median(samples) <= LIMIT_MB,
            runs=reps,
            samples=samples,
        )
    )


if __name__ == "__main__":
    _child(*sys.argv[1:6])


__all__ = ["Path", "run"]
