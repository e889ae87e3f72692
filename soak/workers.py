"""Run workers: processes that execute the runs the sensor requests, or one sensor tick.

Why processes: the soak must SIGKILL an archive run mid-batch and evaluate the sensor in a
fresh process, as a crashed run worker or a restarted daemon would. Each worker builds the
real definitions once and then executes requests read from stdin against the shared
DAGSTER_HOME, archive and audit database (like a run launcher reusing warm processes).

Protocol: one JSON object per line on stdin; replies are JSON lines on the original stdout
(fd 1 is redirected to stderr inside the worker, so nothing else can interleave with them).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from spine_pipeline.defs.names import ARCHIVE_JOB

#: Dagster's console logger off: the soak prints its own summary; events still go to the
#: instance event log.
QUIET_LEVEL = "CRITICAL"
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


# -- inside the worker process ------------------------------------------------------------


def worker_main() -> int:
    """`python -m soak worker`: serve archive and tick requests until EOF."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # any stray print goes to the log, never into the protocol stream
    sys.stdout = sys.stderr

    def send(**message: Any) -> None:
        proto.write(json.dumps(message) + "\n")
        proto.flush()

    level = os.environ.get("SPINE_SOAK_LOG_LEVEL")
    if level:  # e.g. DEBUG for the secret scan: every library's log lines, to this log file
        import logging

        logging.basicConfig(level=level.upper(), stream=sys.stderr, force=True)

    import dagster as dg

    from spine_pipeline.definitions import build_definitions
    from spine_pipeline.driver import execute_run, step_failures

    defs = build_definitions()
    with dg.DagsterInstance.get() as instance:
        send(event="ready", pid=os.getpid())
        for line in sys.stdin:
            message = json.loads(line)
            op = message.get("op")
            if op == "exit":
                break
            started = time.monotonic()
            if op == "archive":
                ok, error = False, None
                try:
                    result = execute_run(
                        defs,
                        instance,
                        message.get("job") or ARCHIVE_JOB,
                        message["run_config"],
                        message["tags"],
                        run_id=message["dagster_run_id"],
                        log_level=QUIET_LEVEL,
                    )
                    ok = result.success
                    if not ok:
                        failures = "; ".join(f.message for f in step_failures(result))
                        error = failures[:500] or "run failed"
                except Exception as exc:  # reported, and the worker keeps serving
                    error = f"{type(exc).__name__}: {exc}"[:500]
                send(
                    event="done",
                    dagster_run_id=message["dagster_run_id"],
                    ok=ok,
                    error=error,
                    seconds=round(time.monotonic() - started, 3),
                )
            elif op == "tick":
                send(event="tick", **_tick(defs, instance, message.get("cursor")))
            elif op == "submit":
                send(event="submitted", **_submit(instance, message["catalog"]))
    return 0


def _submit(instance: Any, catalog: str) -> dict[str, Any]:
    """Materialise every submit asset of `catalog` (one `submit_catalog` run)."""
    from spine_pipeline.definitions import build_definitions
    from spine_pipeline.driver import execute_submit_catalog, step_failures, submitted_runs

    started = time.monotonic()
    os.environ["SPINE_CATALOG"] = catalog  # the submit assets are built from the catalog
    result = execute_submit_catalog(build_definitions(), instance, log_level=QUIET_LEVEL)
    return {
        "accepted": [run_id for _, run_id in submitted_runs(result)],
        "failures": [f.message for f in step_failures(result)],
        "seconds": round(time.monotonic() - started, 3),
    }


def _tick(defs: Any, instance: Any, cursor: str | None) -> dict[str, Any]:
    """One sensor evaluation in this (fresh) process, its requests as JSON for the harness."""
    from spine_pipeline.driver import evaluate_poll_sensor, requested_job

    started = time.monotonic()
    try:
        tick = evaluate_poll_sensor(defs, instance, cursor)
    except Exception as exc:
        seconds = round(time.monotonic() - started, 3)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500], "seconds": seconds}
    return {
        "ok": True,
        "cursor": tick.cursor,
        "requests": [
            {"run_config": dict(r.run_config), "tags": dict(r.tags), "job": requested_job(r)}
            for r in tick.run_requests or []
        ],
        "partitions": [
            {"name": r.partitions_def_name, "keys": list(r.partition_keys)}
            for r in tick.dynamic_partitions_requests or []
        ],
        "seconds": round(time.monotonic() - started, 3),
    }


# -- in the harness -----------------------------------------------------------------------


@dataclass
class Job:
    """One run request handed to a worker (an archive batch or an audit refresh)."""

    dagster_run_id: str
    run_ids: list[str]
    run_config: dict[str, Any]
    tags: dict[str, str]
    job_name: str = ARCHIVE_JOB
    started: float = 0.0
    kill_trigger: str | None = None  # "delay" | "first-data-file", armed at dispatch


@dataclass
class Worker:
    """A worker process as the harness sees it."""

    name: str
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    ready: bool = False
    job: Job | None = None
    exiting: bool = False
    killed: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, **message: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()


def _with_project_on_path(env: dict[str, str]) -> dict[str, str]:
    """`env` with the project root first on PYTHONPATH: `soak` is not in the installed wheel,
    so a worker started from another directory must still find it."""
    paths = [str(_PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


class WorkerPool:
    """Spawns workers and turns their replies into `(worker, message)` events."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.events: queue.Queue[tuple[Worker, dict[str, Any]]] = queue.Queue()
        self.workers: list[Worker] = []
        self._count = 0

    def spawn(self, role: str) -> Worker:
        self._count += 1
        name = f"{role}-{self._count:03d}"
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in reap()
        proc = subprocess.Popen(
            [sys.executable, "-m", "soak", "worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=_with_project_on_path(self.env),
            cwd=os.getcwd(),
        )
        worker = Worker(name, proc, log)
        self.workers.append(worker)
        threading.Thread(target=self._read, args=(worker,), daemon=True, name=name).start()
        return worker

    def _read(self, worker: Worker) -> None:
        assert worker.proc.stdout is not None
        for raw in worker.proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            self.events.put((worker, message))
        self.events.put((worker, {"event": "exit", "rc": worker.proc.wait()}))

    def kill(self, worker: Worker) -> None:
        """SIGKILL: no handler, no cleanup, exactly like an OOM kill or a lost node."""
        worker.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)

    def retire(self, worker: Worker) -> None:
        """Ask a worker to finish and exit (EOF on stdin)."""
        worker.exiting = True
        with contextlib.suppress(BrokenPipeError, OSError, AssertionError):
            worker.send(op="exit")
            assert worker.proc.stdin is not None
            worker.proc.stdin.close()

    def reap(self, worker: Worker) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(timeout=10)
        if worker.proc.poll() is None:
            self.kill(worker)
            worker.proc.wait(timeout=10)
        worker.log.close()
        if worker in self.workers:
            self.workers.remove(worker)

    def shutdown(self, timeout: float = 60.0) -> None:
        for worker in list(self.workers):
            if worker.proc.poll() is None and not worker.exiting:
                self.retire(worker)
        deadline = time.monotonic() + timeout
        for worker in list(self.workers):
            left = max(0.1, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=left)
            self.reap(worker)
