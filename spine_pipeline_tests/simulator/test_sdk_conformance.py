"""The official spine-sdk 0.2.0, unchanged, against the simulator (sync and async clients)."""

from __future__ import annotations

import asyncio
import io
import zipfile

import httpx
import pytest
from spine import (
    AsyncSpineClient,
    AuthenticationError,
    BadRequestError,
    BlockType,
    NotFoundError,
    RetryPolicy,
    SpineAPIError,
    SpineClient,
    Template,
)
from spine.models import CanvasDAG, GetRunResponse, RunResult, TaskNode, TaskTree

MAGIC_MEMBERS = {
    "docx": "word/document.xml",
    "xlsx": "xl/workbook.xml",
    "pptx": "ppt/presentation.xml",
}
NO_RETRY = RetryPolicy(max_retries=0)


def check_artifact_bytes(kind: str, data: bytes) -> None:
    if kind in MAGIC_MEMBERS:
        assert data[:4] == b"PK\x03\x04"
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert MAGIC_MEMBERS[kind] in archive.namelist()
            assert "[Content_Types].xml" in archive.namelist()
    elif kind == "png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    elif kind == "html":
        assert data[:15].lower() == b"<!doctype html>"
    else:  # pragma: no cover
        raise AssertionError(f"unexpected artifact type {kind}")


def test_sync_client_end_to_end(simulator, tmp_path):
    upload = tmp_path / "brief.md"
    upload.write_text("# Brief\n\nCompare the options.\n", encoding="utf-8")
    seen_types: set[str] = set()
    with SpineClient(api_key=simulator.api_key, base_url=simulator.base_url) as client:
        handles = [
            client.runs.create(
                "Market report on heat pumps [scenario:completed]",
                template=Template.REPORT,
                files=[upload, ("chart.png", b"\x89PNG\r\n\x1a\nfake", "image/png")],
                agent_instructions="Cite sources",
            ),
            client.runs.create(
                "Deck and model [scenario:completed]",
                blocks=[BlockType.PRESENTATION, BlockType.EXCEL, "web-block", BlockType.APP],
            ),
            client.runs.create("Landing page [scenario:partial]", template="landing_page"),
        ]
        for handle in handles:
            result = handle.wait(timeout=30, poll_interval=0.1, max_poll_interval=0.2)
            assert isinstance(result, RunResult)
            run = handle.refresh()
            assert isinstance(run, GetRunResponse) and run.status.is_terminal
            canvas_id = run.canvas_id or handle.canvas_id
            dag = client.canvas.get_dag(canvas_id)
            assert isinstance(dag, CanvasDAG) and dag.nodes and dag.canvas_id == canvas_id
            tree = client.canvas.get_tasks(canvas_id)
            assert isinstance(tree, TaskTree)
            root = (tree.completed + tree.not_completed)[0]
            one = client.canvas.get_task(canvas_id, root.task_id)
            assert isinstance(one, TaskNode) and one.task_id == root.task_id
            assert [c.task_id for c in one.children or []] == [
                c.task_id for c in root.children or []
            ]
            node_ids = {n.id for n in dag.nodes}
            for artifact in result.artifacts:
                assert artifact.id in node_ids
                response = httpx.get(artifact.download_url)
                assert response.status_code == 200
                check_artifact_bytes(artifact.type, response.content)
                if artifact.size_bytes is not None:
                    assert artifact.size_bytes == len(response.content)
                seen_types.add(artifact.type)
        first_dag = client.canvas.get_dag(handles[0].refresh().canvas_id)
        assert [n.name for n in first_dag.nodes[:2]] == ["brief.md", "chart.png"]
        assert [n.type for n in first_dag.nodes[:2]] == ["file-block", "image-block"]
        assert handles[1].refresh().blocks == [
            "presentation-block",
            "excel-block",
            "web-block",
            "app-block",
        ]
        assert handles[0].refresh().agent_instructions == "Cite sources"
        partial = handles[2].refresh()
        assert partial.errors and partial.errors[0].block_id
    assert {"docx", "pptx", "xlsx", "html"} <= seen_types


def test_failed_run_raises_from_wait(simulator):
    with SpineClient(api_key=simulator.api_key, base_url=simulator.base_url) as client:
        handle = client.runs.create("Doomed [scenario:failed]")
        with pytest.raises(SpineAPIError) as info:
            handle.wait(timeout=30, poll_interval=0.1)
        assert info.value.status_code == 0
        assert "Agent execution failed" in str(info.value)


def test_every_model_validates_many_runs(make_simulator):
    sim = make_simulator(seed=31)
    kinds: set[str] = set()
    with SpineClient(api_key=sim.api_key, base_url=sim.base_url) as client:
        templates = list(Template)
        handles = [
            client.runs.create(f"Topic {i}", template=templates[i % len(templates)])
            for i in range(24)
        ]
        # Poll while running too: progress and mid-run canvases must validate as well.
        for handle in handles[:4]:
            snapshot = handle.refresh()
            if snapshot.status.value == "running":
                assert snapshot.progress is not None
            if snapshot.canvas_id:
                client.canvas.get_dag(snapshot.canvas_id)
                client.canvas.get_tasks(snapshot.canvas_id)
        sim.world.finish_all()
        for handle in handles:
            run = handle.refresh()
            if run.status.value == "failed":
                assert run.errors and run.result is None
            else:
                assert run.result is not None and run.metadata is not None
                kinds.update(a.type for a in run.result.artifacts)
            if run.canvas_id:
                client.canvas.get_dag(run.canvas_id)
                client.canvas.get_tasks(run.canvas_id)
    assert "png" in kinds or "html" in kinds


def test_sdk_error_mapping(simulator):
    with SpineClient(
        api_key=simulator.api_key, base_url=simulator.base_url, retry_policy=NO_RETRY
    ) as client:
        with pytest.raises(BadRequestError) as info:
            client.runs.create("x", template="foo")
        assert info.value.error_message == (
            "Invalid template: foo. Valid templates: "
            "app, auto, deep_research, excel, landing_page, memo, report, slides"
        )
        assert info.value.request_id
        with pytest.raises(BadRequestError):
            client.runs.create("x", blocks=[])
        with pytest.raises(NotFoundError) as missing:
            client.runs.get("550e8400-e29b-41d4-a716-446655440000")
        assert missing.value.error_message == "Run not found: 550e8400-e29b-41d4-a716-446655440000"
        with pytest.raises(BadRequestError):
            client.runs.get("nope")
        with pytest.raises(NotFoundError):
            client.canvas.get_dag("550e8400-e29b-41d4-a716-446655440000")
    with (
        SpineClient(api_key="sk_spine_wrong", base_url=simulator.base_url) as client,
        pytest.raises(AuthenticationError),
    ):
        client.runs.create("x")


def test_sdk_retries_injected_faults(simulator):
    fast = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05)
    with SpineClient(
        api_key=simulator.api_key, base_url=simulator.base_url, retry_policy=fast
    ) as client:
        handle = client.runs.create("retry me")
        simulator.set_faults("get:429=0x1,get:503x1")
        assert client.runs.get(handle.run_id).run_id == handle.run_id
        simulator.set_faults("get:malformedx1")
        with pytest.raises(SpineAPIError, match="Malformed response"):
            client.runs.get(handle.run_id)
        simulator.set_faults("get:false200x1")
        with pytest.raises(SpineAPIError, match="Temporary failure"):
            client.runs.get(handle.run_id)


def test_async_client(simulator):
    async def scenario() -> None:
        async with AsyncSpineClient(
            api_key=simulator.api_key, base_url=simulator.base_url
        ) as client:
            handles = await asyncio.gather(
                *(
                    client.runs.create(f"Async {i} [scenario:completed]", template=Template.SLIDES)
                    for i in range(4)
                )
            )
            results = await asyncio.gather(
                *(h.wait(timeout=30, poll_interval=0.1, max_poll_interval=0.2) for h in handles)
            )
            for handle, result in zip(handles, results, strict=True):
                run = await handle.refresh()
                dag = await client.canvas.get_dag(run.canvas_id)
                tree = await client.canvas.get_tasks(run.canvas_id)
                task = (tree.completed + tree.not_completed)[0]
                assert (
                    await client.canvas.get_task(run.canvas_id, task.task_id)
                ).task_id == task.task_id
                assert {a.id for a in result.artifacts} <= {n.id for n in dag.nodes}
                async with httpx.AsyncClient() as http:
                    for artifact in result.artifacts:
                        response = await http.get(artifact.download_url)
                        check_artifact_bytes(artifact.type, response.content)
            with pytest.raises(NotFoundError):
                await client.runs.get("550e8400-e29b-41d4-a716-446655440000")

    asyncio.run(scenario())


def test_sdk_strips_whitespace_but_raw_payload_keeps_it(make_simulator):
    """Why the archive must not use SDK models: content whitespace is lost there."""
    sim = make_simulator(seed=4)
    with SpineClient(api_key=sim.api_key, base_url=sim.base_url) as client:
        for i in range(10):
            handle = client.runs.create(f"Whitespace {i} [scenario:completed]")
            sim.world.finish(handle.run_id)
            run = handle.refresh()
            raw = sim.world.ground_truth(handle.run_id).dag
            sdk = client.canvas.get_dag(run.canvas_id)
            stripped = [
                (r["content"], s.content)
                for r, s in zip(raw["nodes"], sdk.nodes, strict=True)
                if r["content"] and r["content"] != r["content"].strip()
            ]
            if stripped:
                assert all(
                    raw_content.strip() == sdk_content for raw_content, sdk_content in stripped
                )
                return
    raise AssertionError("no block with significant whitespace in 10 runs")
