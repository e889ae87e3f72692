"""`spine-pipeline dev`: the Dagster UI on 127.0.0.1, pointed at the simulator by default."""

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


@contextlib.contextmanager
def _spine_endpoint(say: Callable[[str], None]) -> Iterator[dict[str, str]]:
    """Real Spine when SPINE_API_KEY is set; otherwise a simulator for the session."""
    if Settings.from_env().api_key:
        say("using SPINE_API_KEY / SPINE_BASE_URL from the environment")
        yield {}
        return
    from spine_pipeline.simulator import SimulatorConfig, SimulatorServer

    with SimulatorServer(SimulatorConfig(run_seconds=(20.0, 90.0)), port=SIMULATOR_PORT) as sim:
        say(f"simulator: {sim.base_url} (API key {sim.api_key}, the simulator's own)")
        yield {"SPINE_API_KEY": sim.api_key, "SPINE_BASE_URL": sim.base_url}


def run_dev(port: int, say: Callable[[str], None] = print) -> int:
    """Run `dagster dev -w workspace.yaml` until interrupted; returns its exit code."""
    home = prepare_dagster_home()
    workspace = Path("workspace.yaml")
    if not workspace.is_file():
        raise FileNotFoundError("workspace.yaml not found: run from the project root")
    with _spine_endpoint(say) as extra_env:
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
