"""Helpers shared by the simulator tests: a raw httpx client and run shortcuts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from spine_pipeline.simulator import SimulatorServer

_URL_RE = re.compile(rb"https?://[^\"/]+/files/[^\"]*")


class Api:
    """Thin raw-HTTP helper around one simulator (no SDK, no retries)."""

    def __init__(self, sim: SimulatorServer) -> None:
        self.sim = sim
        self.http = httpx.Client(
            base_url=sim.base_url, headers={"X-API-KEY": sim.api_key}, timeout=60
        )

    def create(self, prompt: str = "Write a report on heat pumps", **fields: Any) -> dict[str, Any]:
        files = fields.pop("files", None)
        response = self.http.post("/v1/run", data={"prompt": prompt, **fields}, files=files)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def get(self, run_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/run/{run_id}")
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def finished(
        self, prompt: str = "Write a report on heat pumps", **fields: Any
    ) -> dict[str, Any]:
        """Create a run, finish it at once, return the terminal GET data."""
        run_id = self.create(prompt, **fields)["run_id"]
        self.sim.world.finish(run_id)
        return self.get(run_id)

    def dag(self, canvas_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/canvas/{canvas_id}/dag")
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def tasks(self, canvas_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/canvas/{canvas_id}/tasks")
        assert response.status_code == 200, response.text
        return response.json()["data"]


@pytest.fixture
def api(simulator: SimulatorServer) -> Iterator[Api]:
    helper = Api(simulator)
    yield helper
    helper.http.close()


def without_download_urls(run: dict[str, Any]) -> dict[str, Any]:
    """A copy of a run payload with ``download_url`` removed (it changes on every mint)."""
    out = dict(run)
    if isinstance(out.get("result"), dict):
        result = dict(out["result"])
        result["artifacts"] = [
            {k: v for k, v in a.items() if k != "download_url"} for a in result["artifacts"]
        ]
        out["result"] = result
    return out


def mask_urls(body: bytes) -> bytes:
    """Replace signed file URLs in a raw body (for byte comparisons across mints)."""
    return _URL_RE.sub(b"/files/<url>", body)


def walk_tasks(tree: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every task of a task-tree payload, iteratively."""
    stack = list(tree["completed"]) + list(tree["not_completed"])
    while stack:
        task = stack.pop()
        yield task
        stack.extend(task.get("children") or [])
