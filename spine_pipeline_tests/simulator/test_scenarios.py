"""Every ``[scenario:NAME]`` marker, observed over HTTP and checked against ground truth."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import httpx
import pytest

from spine_pipeline.simulator.content import HOSTILE_NAMES
from spine_pipeline.simulator.jsonio import dumps_iterative, loads_deep
from spine_pipeline_tests.simulator.conftest import mask_urls, without_download_urls


@pytest.mark.parametrize("outcome", ["completed", "partial", "failed"])
def test_forced_outcomes(api, outcome):
    for i in range(4):
        assert api.finished(f"Run {i} [scenario:{outcome}]")["status"] == outcome


def test_slow_never_finishes_until_told(api):
    run_id = api.create("[scenario:slow] Never ending")["run_id"]
    api.sim.world.advance(23 * 3600)
    run = api.get(run_id)
    assert run["status"] == "running"
    assert run["progress"]["tasks_completed"] < run["progress"]["tasks_total"]
    api.sim.world.finish(run_id)
    assert api.get(run_id)["status"] in ("completed", "partial", "failed")
    other = api.create("[scenario:slow] second")["run_id"]
    api.sim.world.advance(24 * 3600 + 1)
    assert api.get(other)["status"] != "running"


def test_hostile_names(api):
    run = api.finished("[scenario:hostile-names] names")
    names = [a["name"] for a in run["result"]["artifacts"]]
    for hostile in HOSTILE_NAMES:
        assert hostile in names
    truth = api.sim.world.ground_truth(run["run_id"])
    for artifact in run["result"]["artifacts"]:
        response = httpx.get(artifact["download_url"])
        assert response.status_code == 200
        assert response.content == truth.artifacts[artifact["id"]].content
        disposition = response.headers.get("content-disposition", "")
        assert "\x00" not in disposition and "/" not in disposition.split("''")[-1]
    dag = api.dag(run["canvas_id"])
    assert "\x00" in dag["canvas_name"]
    assert any(n["name"] == "A" * 4995 + ".html" for n in dag["nodes"])


@pytest.mark.heavy
def test_huge_content(api):
    run = api.finished("[scenario:huge-content] big")
    response = api.http.get(f"/v1/canvas/{run['canvas_id']}/dag")
    assert len(response.content) > 20 * 1024 * 1024
    nodes = response.json()["data"]["nodes"]
    sizes = sorted(len((n["content"] or "").encode("utf-8")) for n in nodes)
    assert sizes[-1] == 20 * 1024 * 1024 and sizes[-2] < 100_000
    truth = api.sim.world.ground_truth(run["run_id"])
    assert mask_urls(response.content) == mask_urls(truth.dag_body)


@pytest.mark.heavy
def test_many_blocks(api):
    run = api.finished("[scenario:many-blocks] wide")
    dag = api.dag(run["canvas_id"])
    assert len(dag["nodes"]) >= 20_000
    assert len({n["id"] for n in dag["nodes"]}) == len(dag["nodes"])
    assert len(dag["edges"]) >= 19_000
    assert run["result"]["artifacts"]


@pytest.mark.heavy
def test_deep_tasks(api):
    run = api.finished("[scenario:deep-tasks] deep")
    response = api.http.get(f"/v1/canvas/{run['canvas_id']}/tasks")
    with pytest.raises(RecursionError):
        json.loads(response.content)
    tree = loads_deep(response.content)["data"]
    depth, stack = 0, [(t, 1) for t in tree["completed"] + tree["not_completed"]]
    while stack:
        task, level = stack.pop()
        depth = max(depth, level)
        stack.extend((c, level + 1) for c in task.get("children") or [])
    assert depth == 5_000
    truth = api.sim.world.ground_truth(run["run_id"])
    assert response.content == truth.tasks_body
    assert dumps_iterative({"success": True, "data": truth.tasks}).encode() == response.content
    with pytest.raises(RecursionError):
        json.dumps(truth.tasks)


def test_odd_sources(api):
    run = api.finished("[scenario:odd-sources] sources")
    nodes = api.dag(run["canvas_id"])["nodes"]
    biggest = max(nodes, key=lambda n: len(n["sources"]))
    assert len(biggest["sources"]) == 10_000
    everything = [s for n in nodes for s in n["sources"]]
    assert any(isinstance(s, str) for s in everything)
    assert any(s is None for s in everything)
    assert any(isinstance(s, list) and any(isinstance(x, list) for x in s) for s in everything)
    assert any(isinstance(s, dict) and "url" not in s for s in everything)


def test_unknown_status(api):
    run_id = api.create("[scenario:unknown-status] odd")["run_id"]
    api.sim.world.finish(run_id)
    first, second, third = api.get(run_id), api.get(run_id), api.get(run_id)
    assert first["status"] in ("cancelled", "queued") and second["status"] == first["status"]
    assert third["status"] == "completed"
    truth = api.sim.world.ground_truth(run_id)
    assert without_download_urls(truth.final_run) == without_download_urls(third)


def test_unknown_fields_at_every_level(api):
    run_id = api.create("[scenario:unknown-fields] extras")["run_id"]
    running = api.get(run_id)
    assert "x_trace_id" in running and "phase" in running["progress"]
    api.sim.world.finish(run_id)
    run = api.get(run_id)
    known = {
        "run": {"run_id", "status", "canvas_id", "duration_ms", "result", "metadata", "errors"}
        | {"prompt", "template", "blocks", "agent_instructions"},
        "result": {"final_output", "artifacts"},
        "metadata": {"template_used", "models_used", "credits_consumed"},
        "artifact": {"id", "type", "name", "download_url", "size_bytes"},
        "node": {"id", "name", "type", "status", "content", "url", "sources"},
        "edge": {"source_id", "target_id"},
        "task": {"task_id", "name", "task_type", "status", "children"},
        "dag": {"canvas_id", "canvas_name", "nodes", "edges"},
        "tasks": {"canvas_id", "completed", "not_completed"},
    }
    dag, tasks = api.dag(run["canvas_id"]), api.tasks(run["canvas_id"])
    samples = {
        "run": run,
        "result": run["result"],
        "metadata": run["metadata"],
        "artifact": run["result"]["artifacts"][0],
        "node": dag["nodes"][0],
        "edge": dag["edges"][0],
        "task": (tasks["completed"] + tasks["not_completed"])[0],
        "dag": dag,
        "tasks": tasks,
    }
    for level, obj in samples.items():
        assert set(obj) - known[level], f"no unknown field at {level}"


def test_bad_utf8(api):
    run = api.finished("[scenario:bad-utf8] bytes")
    response = api.http.get(f"/v1/canvas/{run['canvas_id']}/dag")
    assert response.status_code == 200
    with pytest.raises(UnicodeDecodeError):
        response.content.decode("utf-8")
    assert b"caf\xe9" in response.content
    truth = api.sim.world.ground_truth(run["run_id"])
    assert mask_urls(response.content) == mask_urls(truth.dag_body)
    assert any("\ufffd" in (n["content"] or "") for n in truth.dag["nodes"])


def test_invalid_json(api):
    run = api.finished("[scenario:invalid-json] broken")
    response = api.http.get(f"/v1/canvas/{run['canvas_id']}/dag")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    with pytest.raises(ValueError):
        response.json()
    truth = api.sim.world.ground_truth(run["run_id"])
    assert truth.dag is None and mask_urls(truth.dag_body) == mask_urls(response.content)
    assert api.tasks(run["canvas_id"])["canvas_id"] == run["canvas_id"]


def test_lying_length(api):
    run = api.finished("[scenario:lying-length] liar", template="report")
    truth = api.sim.world.ground_truth(run["run_id"])
    artifacts = run["result"]["artifacts"]
    liar, honest = artifacts[0], artifacts[1:]
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", liar["download_url"]) as r:
        declared = int(r.headers["content-length"])
        for chunk in r.iter_raw():
            received += chunk
    real = truth.artifacts[liar["id"]]
    assert declared > real.size and bytes(received) == real.content
    for artifact in honest:
        assert (
            httpx.get(artifact["download_url"]).content == truth.artifacts[artifact["id"]].content
        )


def test_size_mismatch(api):
    run = api.finished("[scenario:size-mismatch] sizes")
    artifact = run["result"]["artifacts"][0]
    truth = api.sim.world.ground_truth(run["run_id"]).artifacts[artifact["id"]]
    assert artifact["size_bytes"] != truth.size == len(httpx.get(artifact["download_url"]).content)
    assert truth.reported_size == artifact["size_bytes"]


def test_canvas_404(api):
    run = api.finished("[scenario:canvas-404] ghost")
    assert run["status"] == "completed" and run["canvas_id"]
    for suffix in ("dag", "tasks", f"tasks/{run['run_id']}"):
        response = api.http.get(f"/v1/canvas/{run['canvas_id']}/{suffix}")
        assert response.status_code == 404
        assert response.json()["error"] == f"Canvas not found: {run['canvas_id']}"
    truth = api.sim.world.ground_truth(run["run_id"])
    assert truth.dag is None and truth.tasks is None and truth.canvas_id == run["canvas_id"]


def test_duplicate_blocks(api):
    run = api.finished("[scenario:duplicate-blocks] twins")
    ids = [n["id"] for n in api.dag(run["canvas_id"])["nodes"]]
    assert len(ids) == len(set(ids)) + 1


def test_scenarios_combine(api):
    run = api.finished("[scenario:partial] [scenario:hostile-names] [scenario:unknown-fields] mix")
    assert run["status"] == "partial" and "x_trace_id" in run
    assert HOSTILE_NAMES[0] in [a["name"] for a in run["result"]["artifacts"]]
    assert api.finished("[scenario:nonsense] ignored")["status"] in (
        "completed",
        "partial",
        "failed",
    )


def _png_ok(head: bytes) -> tuple[int, int]:
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", head[8:16])
    assert kind == b"IHDR" and length == 13
    assert struct.unpack(">I", head[29:33])[0] == zlib.crc32(head[12:29])
    return struct.unpack(">II", head[16:24])


@pytest.mark.heavy
def test_big_artifact_streams(api):
    run = api.finished("[scenario:big-artifact] huge file")
    truth = api.sim.world.ground_truth(run["run_id"])
    big = next(a for a in truth.artifacts.values() if a.content is None)
    assert big.size >= 199 * 1024 * 1024
    url = next(a["download_url"] for a in run["result"]["artifacts"] if a["id"] == big.artifact_id)
    digest, total, head = hashlib.sha256(), 0, b""
    with httpx.stream("GET", url, timeout=120) as response:
        assert response.headers["content-type"] == "image/png"
        assert int(response.headers["content-length"]) == big.size
        for chunk in response.iter_raw(1 << 20):
            if len(head) < 64:
                head += chunk[:64]
            digest.update(chunk)
            total += len(chunk)
    assert total == big.size and digest.hexdigest() == big.sha256
    _png_ok(head)
