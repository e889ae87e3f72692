"""A production-shaped deployment as separate OS processes, for the multi-process tests.

One `Stack` is: the Spine simulator (`spine-pipeline simulator`), a code server
(`dagster api grpc -m spine_pipeline.definitions`) and `dagster-daemon run`, all reading
DAGSTER_HOME/dagster.yaml, which is a copy of deploy/dagster.yaml (one home for the config)
pointed at a fresh database on the throwaway PostgreSQL server through its DAGSTER_PG_*
variables, and deploy/workspace.yaml pointed at the code server's port. Runs are launched by
the default run launcher: the code server starts each run worker as a child process.

Every wait is bounded; a timeout raises with the tail of every process's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from spine_pipeline.archive.ledger import Ledger
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.read import read_committed
from spine_pipeline.archive.stores import open_store
from spine_pipeline.spine import SpineClient
from spine_pipeline.submission import SubmitSpec, submit_and_record
from spine_pipeline_tests.fixtures.ports import free_ports
from spine_pipeline_tests.fixtures.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
API_KEY = "sk_spine_deploytest"
TERMINAL = ("completed", "partial", "failed")
IN_PROGRESS = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


class Proc:
    """One child process in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = logdir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        """Signal the whole process group; SIGKILL it after `grace` seconds."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        # Children that outlived their parent (run workers) go with the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


class Stack:
    """Simulator + code server + daemon on a fresh Postgres database and a fresh archive."""

    def __init__(
        self,
        tmp: Path,
        pg: PostgresServer,
        *,
        run_seconds: str = "0.5:1.5",
        settings: dict[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.pg = pg
        self.db = pg.create_database()
        self.home = tmp / "dagster_home"
        self.home.mkdir(mode=0o700, parents=True)
        shutil.copyfile(DEPLOY / "dagster.yaml", self.home / "dagster.yaml")
        self.archive_uri = str(tmp / "archive")
        self.audit_db = str(tmp / "audit.duckdb")
        self.sim_port, self.code_port = free_ports(2)
        self.base_url = f"http://127.0.0.1:{self.sim_port}"
        catalog = tmp / "requests.yaml"
        catalog.write_text("requests:\n  - name: deploy_probe\n    prompt: probe\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPINE_", "DAGSTER_"))}
        env.update(pg.env(self.db))
        env.update(
            {
                "DAGSTER_HOME": str(self.home),
                "DAGSTER_CODE_SERVER_HOST": "127.0.0.1",
                "DAGSTER_CODE_SERVER_PORT": str(self.code_port),
                "SPINE_API_KEY": API_KEY,
                "SPINE_BASE_URL": self.base_url,
                "SPINE_ARCHIVE_URI": self.archive_uri,
                "SPINE_AUDIT_DB": self.audit_db,
                "SPINE_CATALOG": str(catalog),
                "PYTHONUNBUFFERED": "1",
                # Launching a run waits until its worker has loaded the code: on a swamped
                # CI machine that can pass Dagster's 60 s default.
                "DAGSTER_GRPC_TIMEOUT_SECONDS": "240",
                **(settings or {}),
            }
        )
        self.env = env
        logs = tmp / "logs"
        logs.mkdir()
        self.simulator = Proc(
            "simulator",
            [
                str(BIN / "spine-pipeline"),
                "simulator",
                "--port",
                str(self.sim_port),
                "--api-key",
                API_KEY,
                "--run-seconds",
                run_seconds,
            ],
            env,
            logs,
        )
        self.code_server = Proc(
            "code_server",
            [
                str(BIN / "dagster"),
                "api",
                "grpc",
                "-m",
                "spine_pipeline.definitions",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.code_port),
            ],
            env,
            logs,
        )
        self.daemon = Proc(
            "daemon",
            [str(BIN / "dagster-daemon"), "run", "-w", str(DEPLOY / "workspace.yaml")],
            env,
            logs,
        )
        self.procs = [self.simulator, self.code_server, self.daemon]
        self.submitted: list[str] = []

    # -- processes --------------------------------------------------------------------------

    def logs(self) -> str:
        parts = [f"--- {p.name} (tail) ---\n{p.tail()}" for p in self.procs]
        return "\n".join(parts)

    def wait(self, what: str, cond: Callable[[], Any], timeout: float, every: float = 0.3) -> Any:
        """Poll `cond` until truthy; on timeout fail with `what` and every process's log."""
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            for p in self.procs:
                code = p.popen.returncode if p.popen is not None and not p.alive else None
                if code is not None and code > 0:
                    raise AssertionError(
                        f"{p.name} exited with {p.popen.returncode} while waiting for "
                        f"{what}\n{self.logs()}"
                    )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s: {what}\n{self.logs()}")
            time.sleep(every)

    def start_simulator(self) -> None:
        self.simulator.start()
        self.wait("the simulator to answer", self._sim_up, 30)

    def _sim_up(self) -> bool:
        try:
            self.sim_state()
            return True
        except httpx.HTTPError:
            return False

    def start_code_server(self) -> None:
        self.code_server.start()

    def wait_code_server(self, timeout: float = 120) -> None:
        """Until the code server has logged it serves (once more per restart) and its port
        accepts connections."""
        starts = self.code_server.starts

        def served() -> bool:
            try:
                text = self.code_server.log_path.read_text(errors="replace")
            except OSError:
                return False
            return text.count("Started Dagster code server") >= starts

        self.wait("the code server to serve", served, timeout)
        self.wait("the code server's port", self._port_open(self.code_port), timeout)

    @staticmethod
    def _port_open(port: int) -> Callable[[], bool]:
        def probe() -> bool:
            with socket.socket() as s:
                s.settimeout(0.5)
                return s.connect_ex(("127.0.0.1", port)) == 0

        return probe

    def start_daemon(self) -> None:
        self.daemon.start()

    @contextlib.contextmanager
    def instance(self) -> Iterator[Any]:
        """The Dagster instance of DAGSTER_HOME/dagster.yaml, as the processes see it."""
        from dagster import DagsterInstance

        saved = {k: os.environ.get(k) for k in self.env if k.startswith("DAGSTER_PG_")}
        os.environ.update({k: self.env[k] for k in saved})
        try:
            with DagsterInstance.from_config(str(self.home)) as instance:
                yield instance
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def init_instance(self) -> None:
        """Create Dagster's tables once, before three processes race to."""
        with self.instance():
            pass

    def pool_slots(self, pool: str) -> int:
        """How many slots the instance gives `pool` (dagster.yaml's `pools.default_limit`)."""
        with self.instance() as instance:
            return int(instance.event_log_storage.get_concurrency_info(pool).slot_count)

    def stop(self) -> None:
        """SIGTERM every process group at once, then stop each (SIGKILL after a grace)."""
        for p in self.procs:
            if p.alive and p.popen is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.popen.pid, signal.SIGTERM)
        for p in reversed(self.procs):
            p.stop(grace=5)

    # -- Spine (the simulator) ----------------------------------------------------------------

    def _admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"x-api-key": API_KEY}, timeout=10)

    def sim_state(self) -> dict[str, Any]:
        with self._admin() as c:
            r = c.get("/_sim/state")
            r.raise_for_status()
            return dict(r.json()["data"])

    def set_faults(self, spec: str) -> None:
        with self._admin() as c:
            c.post("/_sim/faults", json={"spec": spec}).raise_for_status()

    def submit(self, count: int) -> list[str]:
        """Submit `count` runs as `spine-pipeline submit` does (recorded and tracked)."""
        ledger = Ledger(open_store(self.archive_uri))
        ids = []
        with SpineClient(api_key=API_KEY, base_url=self.base_url) as client:
            for i in range(count):
                spec = SubmitSpec(prompt=f"deploy test run {len(self.submitted) + i}")
                ids.append(submit_and_record(client, ledger, spec, source="cli").created.run_id)
        self.submitted.extend(ids)
        return ids

    def ground_truth(self) -> dict[str, tuple[str | None, int | None, str | None]]:
        """Spine's answer for every submitted run: (status, credits, final output)."""
        truth = {}
        with SpineClient(api_key=API_KEY, base_url=self.base_url) as client:
            for run_id in self.submitted:
                run = client.get_run(run_id)
                output = (run.data.get("result") or {}).get("final_output")
                truth[run_id] = (run.status, run.credits_consumed, output)
        return truth

    def wait_terminal(
        self, timeout: float = 30
    ) -> dict[str, tuple[str | None, int | None, str | None]]:
        def all_terminal() -> dict[str, Any] | None:
            truth = self.ground_truth()
            return truth if all(t[0] in TERMINAL for t in truth.values()) else None

        result: dict[str, tuple[str | None, int | None, str | None]] = self.wait(
            "every submitted run to end in the simulator", all_terminal, timeout, every=0.5
        )
        return result

    # -- the archive --------------------------------------------------------------------------

    def archived_rows(self) -> list[dict[str, Any]]:
        store = open_store(self.archive_uri)
        log = ManifestLog(store)
        log.refresh()
        columns = ["run_id", "status", "credits_consumed", "final_output"]
        return list(read_committed(store, "runs", columns=columns, log=log).to_pylist())

    def archived_ids(self) -> set[str]:
        return {r["run_id"] for r in self.archived_rows()}

    # -- Dagster's storage in Postgres ----------------------------------------------------------

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = self.pg.connect(self.db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def dagster_runs(self, job: str | None = None) -> list[dict[str, Any]]:
        """Runs in Postgres run storage: id, job, status, start/end times, config run ids."""
        rows = self.query(
            "SELECT run_id, pipeline_name, status, start_time, end_time, run_body FROM runs"
            + (" WHERE pipeline_name = %s" if job else "")
            + " ORDER BY create_timestamp",
            *([job] if job else []),
        )
        out = []
        for run_id, name, status, start, end, body in rows:
            config = json.loads(body).get("run_config") or {}
            op = ((config.get("ops") or {}).get("archive_batch") or {}).get("config") or {}
            out.append(
                {
                    "run_id": run_id,
                    "job": name,
                    "status": status,
                    "start": start,
                    "end": end,
                    "spine_runs": list(op.get("run_ids") or []),
                }
            )
        return out

    def quiet(self) -> bool:
        """No Dagster run queued or in progress."""
        return not any(r["status"] in IN_PROGRESS for r in self.dagster_runs())

    def events(self, event_type: str, run_id: str | None = None) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT run_id, step_key, timestamp, partition, event FROM event_logs "
            "WHERE dagster_event_type = %s"
            + (" AND run_id = %s" if run_id else "")
            + " ORDER BY id",
            event_type,
            *([run_id] if run_id else []),
        )
        return [
            {"run_id": r, "step": s, "time": t, "partition": p, "event": e}
            for r, s, t, p, e in rows
        ]

    def audit_run_count(self) -> int:
        from spine_pipeline.audit import run_sql

        if not Path(self.audit_db).exists():
            return -1
        try:
            _, rows = run_sql(self.audit_db, "SELECT count(*) FROM runs")
        except Exception:
            return -1
        return int(rows[0][0])
