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
import time
from pathlib import Path
from typing import Any

from benchmarks import burst
from benchmarks.common import BENCH_DIR, Result, Row, say
from benchmarks.daemon import drive_burst, run_workers
from benchmarks.dagster_env import pipeline_env
from benchmarks.sim import SimProcess
from spine_pipeline.archive.ledger import Ledger
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.stores import open_store

RUNS_ENV = "SPINE_BENCH_BURST_BIG_RUNS"
RUNS = 10_000


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of a live process (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


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
    burst._fresh(workdir)
    archive = workdir / "archive"
    ledger = Ledger(open_store(str(archive)))
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    for run_id in ids:
        ledger.track(run_id, request_name="burst", submitted_at=now, now=now)
    facts: dict[str, Any] = {}
    with (
        pipeline_env(base_url=sim.base_url, api_key=sim.api_key, workdir=workdir) as (
            defs,
            instance,
        ),
        run_workers(burst.WORKERS, workdir / "worker-logs") as pool,
    ):
        log = ManifestLog(open_store(str(archive)))
        wall_start = time.time()
        start = time.perf_counter()
        daemon = drive_burst(
            defs,
            instance,
            pool,
            log,
            len(ids),
            tick_every=burst.TICK_EVERY,
            timeout=3600.0,  # a guard against a hang
        )
        seconds = time.perf_counter() - start
        facts["worker_peak_rss_mb"] = [round(vm_hwm_mb(w.pid), 1) for w in pool.workers]
        if daemon.failed_runs:
            raise RuntimeError(f"Dagster runs failed: {daemon.failed_runs[:3]}")
        facts["ticks"] = daemon.ticks
        facts["archive_runs"] = daemon.archive_runs
        facts["audit_refreshes"] = daemon.audit_refreshes
        facts["manifests"] = log.last_seq
        facts.update(burst._phase_seconds(instance, limit=10_000))
        facts["timeline"] = burst.timeline(instance, wall_start)
    facts.update(event_log_rows(workdir / "dagster_home"))
    facts["archive_bytes"] = burst._du(archive)
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
