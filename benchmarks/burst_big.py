"""Benchmark 2b (opt-in): a 10,000-run burst through the same path as `burst`, once.

`python -m benchmarks burst_big --no-doc` (not in `make bench`: setting up 10,000 runs and
their 3 GB of artifacts in the simulator, then archiving them, takes longer than the whole
suite of figures should). `SPINE_BENCH_BURST_BIG_RUNS` changes the size.

Measured, as in `burst` (the same workload per run, the same emulated daemon with 2 run
workers, fresh SQLite instance and archive): the wall time from the first tick until every
run is committed and the audit database has caught up; the Dagster runs launched (archive
batches, audit refreshes); the rows Dagster's SQLite event log holds afterwards (every
run's shard, and the cross-run index that mirrors asset events); the peak RSS (VmHWM) of
each run worker. No floor: it is reported, not a target; the 1,000-run figure carries the
ratio. One repetition (`--reps` is ignored): a second would double a long set-up for a
figure that is not compared.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from benchmarks import burst
from benchmarks.common import BENCH_DIR, Result, Row, say
from benchmarks.sim import SimProcess

RUNS_ENV = "SPINE_BENCH_BURST_BIG_RUNS"
RUNS = 10_000


def event_log_rows(dagster_home: Path) -> dict[str, int]:
    """Rows of `event_logs` in the run shards and in the cross-run index (SQLite storage)."""
    runs_dir = dagster_home / "history" / "runs"
    shard_rows = 0
    index_rows = 0
    for db in sorted(runs_dir.glob("*.db")):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            (count,) = con.execute("SELECT count(*) FROM event_logs").fetchone()
        finally:
            con.close()
        if db.stem == "index":
            index_rows = int(count)
        else:
            shard_rows += int(count)
    return {"event_log_rows": shard_rows, "event_log_index_rows": index_rows}


def pipeline_big(sim: SimProcess, ids: list[str], workdir: Path) -> tuple[float, dict[str, Any]]:
    """`burst.pipeline_once` with a long guard, plus the event log's row counts."""
    seconds, facts = burst.pipeline_once(sim, ids, workdir, timeout=3600.0)
    facts.update(event_log_rows(workdir / "dagster_home"))
    return seconds, facts


def run(reps: int = 1, quick: bool = False) -> Result:
    del reps  # one repetition: see the module docstring
    result = Result("burst_big")
    n = 1_000 if quick else int(os.environ.get(RUNS_ENV) or RUNS)
    workdir = BENCH_DIR / "scratch" / "burst_big"
    with SimProcess(burst.sim_config()) as sim:
        say(f"burst_big: submitting {n} runs and finishing them together (setup)")
        ids = burst.submit(sim, n)
        say("burst_big: pipeline")
        seconds, facts = pipeline_big(sim, ids, workdir / "pipeline")
    say(
        f"burst_big: {seconds:.1f} s, {facts['archive_runs']} archive runs + "
        f"{facts['audit_refreshes']} refreshes, {facts['event_log_rows']} event-log rows, "
        f"worker peak RSS {facts['worker_peak_rss_mb']} MB"
    )
    say(f"burst_big: timeline {facts.pop('timeline')}")
    result.facts.update({"runs": n, "workers": burst.WORKERS, **facts})
    result.rows.append(
        Row(
            "burst_big",
            f"burst archive, {n:,} runs (sensor -> {facts['archive_runs']} archive runs + "
            f"{facts['audit_refreshes']} audit refreshes, {burst.WORKERS} at a time), once",
            seconds,
            runs=1,
            samples=[seconds],
            note="reported, no target",
        )
    )
    return result
