"""`spine-pipeline dev`: the Dagster UI on 127.0.0.1, pointed at the simulator by default.

With `SPINE_WEBHOOK_SECRET` set it also runs the webhook receiver on 127.0.0.1 (a thread of
this process, storing into `SPINE_ARCHIVE_URI`, like `spine-pipeline webhooks serve`), and
the simulator it starts delivers signed webhooks there with the same secret, so the
`spine_webhook_sensor` path works locally end to end. Everything started here stops when
`dagster dev` ends (Ctrl+C): the simulator first (no delivery to a receiver that is gone),
then the receiver, which finishes the deliveries in flight.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from spine_pipeline.driver import prepare_dagster_home
from spine_pipeline.settings import Settings

SIMULATOR_PORT = 8765
#: The receiver's port, `webhooks serve`'s default.
WEBHOOK_PORT = 8787


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
        say(f"simulator: {sim.base_url} (API key {sim.api_key}, the simulator's own)")
        if webhook_url:
            say(f"  sending signed webhooks to {webhook_url}")
        yield {"SPINE_API_KEY": sim.api_key, "SPINE_BASE_URL": sim.base_url}


def run_dev(port: int, say: Callable[[str], None] = print) -> int:
    """Run `dagster dev -w workspace.yaml` until interrupted; returns its exit code."""
    home = prepare_dagster_home()
    workspace = Path("workspace.yaml")
    if not workspace.is_file():
        raise FileNotFoundError("workspace.yaml not found: run from the project root")
    with _webhook_receiver(say) as webhook_url, _spine_endpoint(say, webhook_url) as extra_env:
        env = {**os.environ, **extra_env, "DAGSTER_HOME": str(home)}
        command = [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "-w",
            str(workspace),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ]
        say(f"dagster dev on http://127.0.0.1:{port} (DAGSTER_HOME={home})")
        try:
            return subprocess.call(command, env=env)
        except KeyboardInterrupt:
            return 0
