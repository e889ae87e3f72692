"""The simulator in its own process, so that it never shares a GIL with what is measured.

In process (a uvicorn thread), every request the simulator serves would steal interpreter
time from the client under test, and a 2-core machine would show the sum of both. A child
process gets the other core, as a real Spine would be on another machine. It is driven over
HTTP (`/_sim/*` admin endpoints) like any remote Spine.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import httpx

from benchmarks.common import ROOT
from spine_pipeline.simulator import SimulatorConfig


def _serve(config_fields: dict[str, Any]) -> None:
    """Child side: serve until stdin closes (the parent exited or said stop)."""
    import logging

    from spine_pipeline.simulator import SimulatorServer

    logging.getLogger("spine_pipeline.simulator").setLevel(logging.WARNING)
    server = SimulatorServer(SimulatorConfig(**config_fields), port=0).start()
    print(server.port, flush=True)
    sys.stdin.read()
    server.stop()


class SimProcess:
    """`with SimProcess(SimulatorConfig(...)) as sim:` a simulator on loopback in a child."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.port: int | None = None
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> SimProcess:
        fields = json.dumps(asdict(self.config))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.sim", fields],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.strip().isdigit():
            self._proc.kill()
            raise RuntimeError(f"simulator process did not start (said {line!r})")
        self.port = int(line)
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self._proc = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return int(self._proc.pid)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_key(self) -> str:
        return self.config.api_key

    def _admin(self, path: str, payload: Any) -> dict[str, Any]:
        r = httpx.post(
            f"{self.base_url}/_sim/{path}",
            json=payload,
            headers={"X-API-KEY": self.api_key},
            timeout=120,
        )
        r.raise_for_status()
        return r.json()["data"]

    def set_faults(self, spec: str) -> None:
        self._admin("faults", {"spec": spec})

    def finish_all(self) -> None:
        self._admin("finish", {})

    def state(self) -> dict[str, Any]:
        r = httpx.get(
            f"{self.base_url}/_sim/state", headers={"X-API-KEY": self.api_key}, timeout=60
        )
        r.raise_for_status()
        return r.json()["data"]

    def create_runs(
        self,
        n: int,
        *,
        prompt: str = "Benchmark run {i}: market study of grid batteries",
        template: str = "report",
        blocks_cycle: Sequence[Sequence[str] | None] = (None,),
        files: Sequence[tuple[str, bytes, str]] = (),
        concurrency: int = 32,
    ) -> list[str]:
        """Submit `n` runs (setup, not measured); returns their run ids in order."""
        return asyncio.run(
            _create(self, n, prompt, template, list(blocks_cycle), list(files), concurrency)
        )


async def _create(
    sim: SimProcess,
    n: int,
    prompt: str,
    template: str,
    blocks_cycle: list[Sequence[str] | None],
    files: list[tuple[str, bytes, str]],
    concurrency: int,
) -> list[str]:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=sim.base_url, headers={"X-API-KEY": sim.api_key}, limits=limits, timeout=120
    ) as http:

        async def one(i: int) -> str:
            form = {"prompt": prompt.format(i=i), "template": template}
            blocks = blocks_cycle[i % len(blocks_cycle)]
            if blocks is not None:
                form["blocks"] = json.dumps(list(blocks))
            multipart = [("files", f) for f in files] or None
            async with gate:
                r = await http.post("/v1/run", data=form, files=multipart)
            r.raise_for_status()
            return str(r.json()["data"]["run_id"])

        return list(await asyncio.gather(*(one(i) for i in range(n))))


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
