"""The production topology as separate OS processes on PostgreSQL (deploy/README.md).

Each test boots its own stack (`stack.py`): `spine-pipeline simulator`, a code server
(`dagster api grpc`) and `dagster-daemon run`, with DAGSTER_HOME/dagster.yaml copied from
deploy/dagster.yaml and a fresh database on the session's throwaway PostgreSQL. Runs are
submitted to the simulator as `spine-pipeline submit` does; the daemon's sensors hand them
to `archive_spine_runs` through the run queue; the code server starts the run workers.

The end state is compared with Spine's (the simulator's) answers: every terminal run archived
exactly once with its status, credits and output, nothing else archived, `verify` clean, and
Dagster's runs and event log read back from PostgreSQL with psycopg2.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from spine_pipeline.archive.stores import open_store
from spine_pipeline.archive.verify import verify_archive
from spine_pipeline.defs.audit import AUDIT_POOL
from spine_pipeline.defs.names import ARCHIVE_BATCH_OP, ARCHIVE_JOB, AUDIT_JOB
from spine_pipeline_tests.deploy.stack import BIN, DEPLOY, Stack

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]

#: Small batches so that a handful of runs makes several archive runs; the first poll of a
#: run comes at once, the next a second later (the existing settings, nothing added).
SETTINGS = {
    "SPINE_ARCHIVE_BATCH_SIZE": "2",
    "SPINE_POLL_MIN_INTERVAL_SECONDS": "1",
    "SPINE_POLL_MAX_INTERVAL_SECONDS": "2",
}
#: Bounded waits, generous for a loaded two-core machine; a timeout dumps every log.
SETTLE_SECONDS = 300


@pytest.fixture
def make_stack(tmp_path: Path, postgres_server):
    stacks: list[Stack] = []

    def make(**settings: str) -> Stack:
        stack = Stack(
            tmp_path / f"stack{len(stacks)}", postgres_server, settings={**SETTINGS, **settings}
        )
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


def boot(stack: Stack, runs: int, *, before_daemon=None) -> dict:
    """Simulator and code server up, `runs` submitted and ended in Spine, then the daemon."""
    stack.start_simulator()
    stack.start_code_server()
    stack.init_instance()
    stack.submit(runs)
    truth = stack.wait_terminal()
    stack.wait_code_server()
    if before_daemon is not None:
        before_daemon()
    stack.start_daemon()
    return truth


def settle(stack: Stack) -> None:
    """Until every submitted run is archived and audited and no Dagster run is pending."""
    wanted = set(stack.submitted)
    stack.wait(
        f"all {len(wanted)} runs archived",
        lambda: wanted <= stack.archived_ids(),
        SETTLE_SECONDS,
        every=1.0,
    )
    stack.wait(
        f"the audit database to hold all {len(wanted)} runs",
        lambda: stack.audit_run_count() == len(wanted),
        SETTLE_SECONDS,
        every=1.0,
    )
    stack.wait("no Dagster run queued or in progress", stack.quiet, SETTLE_SECONDS, every=1.0)


def assert_matches_ground_truth(stack: Stack) -> None:
    truth = stack.ground_truth()
    rows = stack.archived_rows()
    counts = Counter(r["run_id"] for r in rows)
    twice = sorted(r for r, n in counts.items() if n > 1)
    assert not twice, f"archived more than once: {twice}\n{stack.logs()}"
    assert set(counts) == set(truth), (
        f"archived {sorted(counts)} != submitted {sorted(truth)}\n{stack.logs()}"
    )
    for row in rows:
        status, credits, output = truth[row["run_id"]]
        assert (row["status"], row["credits_consumed"], row["final_output"]) == (
            status,
            credits,
            output,
        ), f"run {row['run_id']} differs from Spine's answer"
    report = verify_archive(open_store(stack.archive_uri))
    assert report.ok, [str(p) for p in report.problems]
    assert report.manifests >= 1


def assert_event_log_in_postgres(stack: Stack, *, exactly_once: bool = True) -> None:
    """Every archived Spine run has its `spine_run` materialisation in Postgres' event log."""
    events = stack.events("ASSET_MATERIALIZATION")
    partitions = Counter(e["partition"] for e in events if e["partition"])
    for run_id in stack.submitted:
        if exactly_once:
            assert partitions[run_id] == 1, f"{run_id}: {partitions[run_id]} materialisations"
        else:
            assert partitions[run_id] >= 1, f"{run_id}: no materialisation in the event log"
    assert stack.query("SELECT count(*) FROM event_logs")[0][0] > len(stack.submitted)


def archive_runs_by_spine_run(stack: Stack, status: str = "SUCCESS") -> Counter[str]:
    runs = [r for r in stack.dagster_runs(ARCHIVE_JOB) if r["status"] == status]
    return Counter(s for r in runs for s in r["spine_runs"])


def step_windows(stack: Stack, job: str, step: str) -> list[tuple[float, float, str]]:
    windows = []
    for run in stack.dagster_runs(job):
        starts = [e["time"] for e in stack.events("STEP_START", run["run_id"]) if e["step"] == step]
        ends = [
            e["time"]
            for kind in ("STEP_SUCCESS", "STEP_FAILURE")
            for e in stack.events(kind, run["run_id"])
            if e["step"] == step
        ]
        if starts and ends:
            windows.append((min(starts).timestamp(), max(ends).timestamp(), run["run_id"]))
    return sorted(windows)


def max_overlap(windows: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in windows] + [(e, -1) for _, e in windows])
    best = current = 0
    for _, delta in points:
        current += delta
        best = max(best, current)
    return best


def launch_job(stack: Stack, job: str) -> subprocess.Popen[bytes]:
    """`dagster job launch`: an operator queueing a run by hand, through the same instance."""
    log = (stack.tmp / "logs" / f"launch-{job}.log").open("ab")
    return subprocess.Popen(
        [str(BIN / "dagster"), "job", "launch", "-j", job, "-w", str(DEPLOY / "workspace.yaml")],
        env=stack.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def test_parallel_archive_runs_and_one_audit_writer(make_stack):
    """Six runs -> three archive runs, two at a time (tag limit); three audit refreshes (two
    queued by hand at once, one by the sensor) whose `audit_database` ops never overlap
    (the spine_audit_db pool, limit 1); the end state is Spine's."""
    stack = make_stack()

    def queue_two_refreshes() -> None:
        launches = [launch_job(stack, AUDIT_JOB), launch_job(stack, AUDIT_JOB)]
        for p in launches:
            assert p.wait(timeout=180) == 0, f"dagster job launch failed\n{stack.logs()}"

    boot(stack, 6, before_daemon=queue_two_refreshes)
    settle(stack)

    assert_matches_ground_truth(stack)
    assert_event_log_in_postgres(stack)
    archive_runs = stack.dagster_runs(ARCHIVE_JOB)
    assert [r["status"] for r in archive_runs] == ["SUCCESS"] * 3, archive_runs
    assert archive_runs_by_spine_run(stack) == Counter(stack.submitted)
    spans = [(r["start"], r["end"]) for r in archive_runs]
    assert max_overlap(spans) == 2, f"not two archive runs at once (tag limit 2): {spans}"

    audits = stack.dagster_runs(AUDIT_JOB)
    assert len(audits) >= 3 and all(r["status"] == "SUCCESS" for r in audits), audits
    ops = step_windows(stack, AUDIT_JOB, "audit_database")
    assert len(ops) == len(audits)
    assert max_overlap([(s, e) for s, e, _ in ops]) == 1, f"audit writers overlapped: {ops}"
    # The two refreshes queued together ran side by side: the pool, not the queue, kept
    # their ops apart.
    runs = sorted((r["start"], r["end"]) for r in audits[:2])
    assert runs[1][0] < runs[0][1], f"the two queued refreshes did not run together: {runs}"
    assert stack.pool_slots(AUDIT_POOL) == 1


def test_killed_run_worker_is_recovered(make_stack):
    """A run worker SIGKILLed mid-batch: the code server marks its run failed, the daemon
    retries it (run_retries); every run is archived exactly once and `verify` is clean."""
    stack = make_stack()
    # Two runs, one batch: its DAG fetches are slowed so that the batch has a middle.
    truth = boot(stack, 2, before_daemon=lambda: stack.set_faults("dag:latency=4000"))
    assert len(truth) == 2

    def archiving_worker() -> tuple[str, int] | None:
        for event in stack.events("STEP_START"):
            if event["step"] == ARCHIVE_BATCH_OP:
                pid = json.loads(event["event"])["dagster_event"]["pid"]
                return event["run_id"], int(pid)
        return None

    run_id, pid = stack.wait("an archive run to start its batch", archiving_worker, 240)
    import os

    os.kill(pid, signal.SIGKILL)
    stack.set_faults("")
    settle(stack)

    killed = {r["run_id"]: r for r in stack.dagster_runs(ARCHIVE_JOB)}[run_id]
    assert killed["status"] == "FAILURE", f"the killed run is {killed['status']}\n{stack.logs()}"
    retries = stack.query(
        "SELECT run_id FROM run_tags WHERE key = 'dagster/parent_run_id' AND value = %s", run_id
    )
    rehanded = archive_runs_by_spine_run(stack)
    assert all(rehanded[r] >= 1 for r in killed["spine_runs"]), (
        f"the killed batch's runs were not archived by a later run (retries: {retries})"
    )
    assert_matches_ground_truth(stack)
    assert_event_log_in_postgres(stack, exactly_once=False)


def test_daemon_and_code_server_restart_mid_stream(make_stack):
    """The daemon SIGKILLed (mid sensor tick: the daemon resumes the tick) and the code server
    restarted (SIGTERM, then a new one on the same port) as the first archive runs are being
    queued; another run comes in meanwhile; all are archived exactly once."""
    # A batch interrupted with its code server is re-requested after this grace if Dagster
    # does not retry it first.
    stack = make_stack(SPINE_POLL_REREQUEST_SECONDS="45")
    boot(stack, 4)
    stack.wait(
        "the first archive run",
        lambda: stack.dagster_runs(ARCHIVE_JOB),
        240,
    )
    stack.daemon.stop(signal.SIGKILL)
    stack.code_server.stop(signal.SIGTERM, grace=60)
    stack.submit(1)
    stack.start_code_server()
    stack.wait_code_server()
    stack.start_daemon()
    stack.wait_terminal()
    settle(stack)

    assert_matches_ground_truth(stack)
    assert_event_log_in_postgres(stack, exactly_once=False)
    assert stack.daemon.starts == 2 and stack.code_server.starts == 2
