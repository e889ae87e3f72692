"""`spine-pipeline dev`: the Dagster UI on 127.0.0.1, pointed at the simulator by default.

With `SPINE_WEBHOOK_SECRET` set it also runs the webhook receiver on 127.0.0.1 (a thread of
this process, storing into `SPINE_ARCHIVE_URI`, like `spine-pipeline webhooks serve`), and
the simulator it starts delivers signed webhooks there with the same secret, so the
`spine_webhook_sensor` path works locally end to end. Everything started here stops when
`dg dev` ends (Ctrl+C): the simulator first (no delivery to a receiver that is gone),
then the receiver, which finishes the deliveries in flight.

`dg dev` (which supersedes `dagster dev`) loads the project `[tool.dg]` in pyproject.toml
names: the same `spine_pipeline.definitions` module as workspace.yaml. It runs in its own
process group, and SIGTERM or SIGINT sent to this process is forwarded to that whole group
(the webserver, the daemon and the code servers `dagster dev` starts), then SIGKILL after a
grace period: a `dev` stopped by a supervisor or a closed terminal leaves no Dagster process
behind holding ports and the instance.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from spine_pipeline.driver import prepare_dagster_home
from spine_pipeline.settings import Settings

SIMULATOR_PORT = 8765
#: The receiver's port, `webhooks serve`'s default.
WEBHOOK_PORT = 8787
#: How long `dg dev` and its children get to stop after a forwarded signal before SIGKILL.
STOP_GRACE_SECONDS = 20.0


@contextlib.contextmanager
def _webhook_receiver(say: Callable[[str], None]) -> Iterator[str | None]:
    """The receiver's delivery URL while it runs; None (nothing started) without a secret."""
    settings = Settings.from_env()
    if not settings.webhook_secrets:
        yield None
        return
    from spine_pipeline.archive.stores import open_store
    from spine_pipeline.webhooks.app import create_app
    from spine_pipeline.webhooks.server import WebhookServer

    app = create_app(open_store(settings.archive_uri), settings.webhook_secrets)
    with WebhookServer(app, port=WEBHOOK_PORT) as receiver:
        say(f"webhook receiver: {receiver.url} (SPINE_WEBHOOK_SECRET, into {settings.archive_uri})")
        yield receiver.url


@contextlib.contextmanager
def _spine_endpoint(
    say: Callable[[str], None], webhook_url: str | None
) -> Iterator[dict[str, str]]:
    """Real Spine when SPINE_API_KEY is set; otherwise a simulator for the session, sending
    webhooks to `webhook_url` when there is one."""
    settings = Settings.from_env()
    if settings.api_key:
        say("using SPINE_API_KEY / SPINE_BASE_URL from the environment")
        if webhook_url:
            say("  real Spine delivers webhooks only to a public https URL (docs/operations.md)")
        yield {}
        return
    from spine_pipeline.simulator import SimulatorConfig, SimulatorServer

    config = SimulatorConfig(
        run_seconds=(20.0, 90.0),
        webhook_url=webhook_url or "",
        webhook_secret=settings.webhook_secrets[0] if webhook_url else "",
    )
    with SimulatorServer(config, port=SIMULATOR_PORT) as sim:
        say(f"simulator: {sim.base_url} (seed {config.seed}; API key {sim.api_key}, its own)")
        if webhook_url:
            say(f"  sending signed webhooks to {webhook_url}")
        yield {"SPINE_API_KEY": sim.api_key, "SPINE_BASE_URL": sim.base_url}


def dg_command(port: int) -> list[str]:
    """`dg dev` on 127.0.0.1: the `dg` beside this Python (the project's venv), else PATH."""
    beside = Path(sys.executable).parent / "dg"
    dg = str(beside) if beside.exists() else shutil.which("dg") or "dg"
    return [dg, "dev", "--host", "127.0.0.1", "--port", str(port)]


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run_child(command: list[str], env: dict[str, str]) -> int:
    """Run `command` in its own process group until it exits; returns its exit code.

    SIGTERM and SIGINT received meanwhile go to the child's whole group; if the child is not
    gone `STOP_GRACE_SECONDS` later, the group is killed. Whatever happens, nothing of the
    group outlives this call.
    """
    # The handlers go in before the child starts: a signal that arrives while it is starting
    # is then forwarded as soon as it exists, instead of killing this process and orphaning it.
    stopping: list[int] = []
    started: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        for process in started:
            _kill_group(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        child = subprocess.Popen(command, env=env, start_new_session=True)
    except BaseException:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise
    started.append(child)
    if stopping:
        _kill_group(child.pid, stopping[-1])
    try:
        # Short waits, so that the grace period runs from the signal, not from the last wait.
        deadline: float | None = None
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if stopping and deadline is None:
                    deadline = time.monotonic() + STOP_GRACE_SECONDS
                elif deadline is not None and time.monotonic() > deadline:
                    _kill_group(child.pid, signal.SIGKILL)
        return 0 if stopping else code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _kill_group(child.pid, signal.SIGKILL)  # stragglers of a child that exited first
        if child.poll() is None:
            child.wait()


def run_dev(port: int, say: Callable[[str], None] = print) -> int:
    """Run `dg dev` until interrupted; returns its exit code."""
    home = prepare_dagster_home()
    if not Path("pyproject.toml").is_file() or not Path("workspace.yaml").is_file():
        raise FileNotFoundError(
            "pyproject.toml/workspace.yaml not found: run from the project root"
        )
    with _webhook_receiver(say) as webhook_url, _spine_endpoint(say, webhook_url) as extra_env:
        # VIRTUAL_ENV: dg warns when the active environment is not the project's.
        env = {
            **os.environ,
            **extra_env,
            "DAGSTER_HOME": str(home),
            "VIRTUAL_ENV": sys.prefix,
        }
        say(f"dg dev on http://127.0.0.1:{port} (DAGSTER_HOME={home})")
        return run_child(dg_command(port), env)
