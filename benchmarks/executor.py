"""`python -m benchmarks.executor [--reps N]`: wall time of the archive and audit jobs on
Dagster's multiprocess executor (the default of asset jobs, which a run worker uses) and on
the in-process executor, against a real persistent instance (DAGSTER_HOME) and a simulator.

Each archive run archives a fresh batch of three terminal simulator runs; each audit run
ingests the manifest the archive run just committed. Runs go through `dg.execute_job` on a
reconstructable job, as a run worker executes a launched run, alternating executors so a
busy machine weighs on both. The figure is recorded in docs/decisions.md (the executor
choice); not part of the generated docs/benchmarks.md block.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import dagster as dg

from benchmarks.common import median, say
from benchmarks.dagster_env import pipeline_env
from spine_pipeline.defs.names import ARCHIVE_JOB, AUDIT_JOB, archive_run_config
from spine_pipeline.driver import quiet
from spine_pipeline.simulator import SimulatorConfig, SimulatorServer
from spine_pipeline.spine import SpineClient

BATCH = 3
EXECUTORS = {"multiprocess": dg.multiprocess_executor, "in_process": dg.in_process_executor}


def job(name: str, executor: str) -> dg.JobDefinition:
    """The definitions' job `name` on `executor` (a reconstructable target: re-imported in
    every step subprocess of the multiprocess executor, as in production)."""
    from spine_pipeline.definitions import build_definitions

    return build_definitions().resolve_job_def(name).with_executor_def(EXECUTORS[executor])


def _terminal_runs(sim: SimulatorServer, n: int) -> list[str]:
    with SpineClient(api_key=sim.api_key, base_url=sim.base_url) as client:
        ids = [client.create_run(f"[scenario:completed] executor {i}").run_id for i in range(n)]
        for run_id in ids:
            while not client.get_run(run_id).is_terminal:
                time.sleep(0.05)
    return ids


def _timed_run(
    instance: dg.DagsterInstance, name: str, executor: str, config: dict[str, object]
) -> float:
    recon = dg.build_reconstructable_job(
        "benchmarks.executor",
        "job",
        reconstructable_args=(name, executor),  # type: ignore[arg-type]  # annotated tuple[object]; any length works
    )
    start = time.perf_counter()
    with dg.execute_job(recon, instance, run_config={**config, **quiet()}) as result:
        ok = result.success
    seconds = time.perf_counter() - start
    assert ok, f"{name} on {executor} failed"
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.executor", description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    sim = SimulatorServer(SimulatorConfig(seed=5, run_seconds=(0.2, 0.4))).start()
    times: dict[tuple[str, str], list[float]] = {}
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            pipeline_env(base_url=sim.base_url, api_key=sim.api_key, workdir=Path(tmp)) as (
                _,
                instance,
            ),
        ):
            for rep in range(args.reps):
                for executor in EXECUTORS if rep % 2 == 0 else reversed(EXECUTORS):
                    ids = _terminal_runs(sim, BATCH)
                    for name, config in (
                        (ARCHIVE_JOB, archive_run_config(ids)),
                        (AUDIT_JOB, {}),
                    ):
                        seconds = _timed_run(instance, name, executor, config)
                        times.setdefault((name, executor), []).append(seconds)
                        say(f"rep {rep + 1}: {name} on {executor}: {seconds:.2f} s")
    finally:
        sim.stop()
    for (name, executor), values in sorted(times.items()):
        say(
            f"{name:20} {executor:12} median {median(values):.2f} s "
            f"(min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
