"""The five endpoints over real HTTP: validation, exact messages, auth, envelope, lifecycle."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from spine_pipeline.simulator.vocab import BLOCK_TYPES, TEMPLATE_BLOCKS

VALID_TEMPLATES = "app, auto, deep_research, excel, landing_page, memo, report, slides"
VALID_BLOCKS = ", ".join(sorted(BLOCK_TYPES))


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert body["success"] is False
    return body["error"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"template": "foo"}, f"Invalid template: foo. Valid templates: {VALID_TEMPLATES}"),
        (
            {"blocks": "not json"},
            "Invalid blocks: must be a JSON-encoded array of block type strings",
        ),
        (
            {"blocks": '{"a": 1}'},
            "Invalid blocks: must be a JSON-encoded array of block type strings",
        ),
        ({"blocks": "[]"}, "Invalid blocks: must be a non-empty array of block types"),
        (
            {"blocks": '["my-block", "web-block", "other"]'},
            f"Invalid block types: my-block, other. Valid block types: {VALID_BLOCKS}",
        ),
    ],
)
def test_create_validation_messages(api, fields, message):
    response = api.http.post("/v1/run", data={"prompt": "x", **fields})
    assert response.status_code == 400
    assert error_of(response) == message
    assert api.sim.world.created_count == 0


def test_create_requires_a_prompt(api):
    for data in ({}, {"prompt": ""}, {"prompt": "   "}):
        response = api.http.post("/v1/run", data=data)
        assert response.status_code == 400
        assert error_of(response) == "Missing required field: prompt"
    response = api.http.post(
        "/v1/run", content=b'{"prompt": "x"}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400


def test_auth_on_every_endpoint(simulator):
    run_id = str(uuid.uuid4())
    paths = [
        ("POST", "/v1/run"),
        ("GET", f"/v1/run/{run_id}"),
        ("GET", f"/v1/canvas/{run_id}/dag"),
        ("GET", f"/v1/canvas/{run_id}/tasks"),
        ("GET", f"/v1/canvas/{run_id}/tasks/{run_id}"),
        ("GET", "/_sim/state"),
        ("POST", "/_sim/faults"),
    ]
    with httpx.Client(base_url=simulator.base_url) as http:
        for method, path in paths:
            missing = http.request(method, path)
            assert missing.status_code == 401, path
            assert error_of(missing) == "X-API-KEY header required"
            assert missing.headers["x-request-id"]
            wrong = http.request(method, path, headers={"X-API-KEY": "sk_spine_wrong"})
            assert wrong.status_code == 401
            assert error_of(wrong) == "Invalid API key"
            assert "sk_spine_simulator" not in wrong.text


def test_envelope_request_id_and_create_shape(api):
    response = api.http.post(
        "/v1/run", data={"prompt": "Draft a memo on tariffs", "template": "memo"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    first_id = response.headers["x-request-id"]
    body = response.json()
    assert body["success"] is True
    data = body["data"]
    assert set(data) <= {"run_id", "status", "poll_url", "estimated_duration_ms", "canvas_id"}
    assert data["status"] == "running"
    assert data["poll_url"] == f"/v1/run/{data['run_id']}"
    assert isinstance(data["estimated_duration_ms"], int) and data["estimated_duration_ms"] >= 0
    assert uuid.UUID(data["run_id"]).version == 4
    again = api.http.get(data["poll_url"])
    assert again.headers["x-request-id"] != first_id


def test_canvas_id_on_create_is_sometimes_missing(make_simulator):
    from spine_pipeline_tests.simulator.conftest import Api

    api = Api(make_simulator(seed=5))
    present = [("canvas_id" in api.create(f"prompt {i}")) for i in range(40)]
    assert 15 <= sum(present) <= 38  # ~70 % by default, deterministic per seed
    api.http.close()


def test_path_parameter_validation(api):
    for path, message in [
        ("/v1/run/not-a-uuid", "Invalid run_id: must be a valid UUID"),
        ("/v1/canvas/xyz/dag", "Invalid canvas_id: must be a valid UUID"),
        ("/v1/canvas/xyz/tasks", "Invalid canvas_id: must be a valid UUID"),
    ]:
        response = api.http.get(path)
        assert response.status_code == 400
        assert error_of(response) == message
    unknown = str(uuid.uuid4())
    response = api.http.get(f"/v1/run/{unknown}")
    assert response.status_code == 404
    assert error_of(response) == f"Run not found: {unknown}"
    for suffix in ("dag", "tasks", f"tasks/{unknown}"):
        response = api.http.get(f"/v1/canvas/{unknown}/{suffix}")
        assert response.status_code == 404
        assert error_of(response) == f"Canvas not found: {unknown}"
    data = api.finished("[scenario:completed] x")
    response = api.http.get(f"/v1/canvas/{data['canvas_id']}/tasks/{unknown}")
    assert response.status_code == 404 and error_of(response) == f"Task not found: {unknown}"
    response = api.http.get(f"/v1/canvas/{data['canvas_id']}/tasks/nope")
    assert (
        response.status_code == 400
        and error_of(response) == "Invalid task_id: must be a valid UUID"
    )
    assert api.http.get("/v1/nothing").status_code == 404
    assert api.http.delete(f"/v1/run/{unknown}").status_code == 405


def test_lifecycle_running_to_terminal_with_growing_tasks(make_simulator):
    from spine_pipeline_tests.simulator.conftest import Api

    sim = make_simulator(run_seconds=(100, 100), canvas_id_on_create_rate=1.0)
    api = Api(sim)
    data = api.create(
        "Compare vector databases [scenario:completed]",
        agent_instructions="Be rigorous",
        template="report",
    )
    totals, completed = [], []
    for _ in range(5):
        run = api.get(data["run_id"])
        assert run["status"] == "running"
        assert set(run["progress"]) == {"tasks_completed", "tasks_total", "elapsed_ms"}
        assert run["progress"]["tasks_completed"] <= run["progress"]["tasks_total"]
        assert run["prompt"].startswith("Compare") and run["template"] == "report"
        assert run["agent_instructions"] == "Be rigorous" and run["blocks"] is None
        assert "result" not in run and "duration_ms" not in run
        totals.append(run["progress"]["tasks_total"])
        completed.append(run["progress"]["tasks_completed"])
        mid_dag = api.dag(run["canvas_id"])
        statuses = {n["status"] for n in mid_dag["nodes"]}
        assert statuses <= {"idle", "running", "completed"}
        sim.world.advance(20)
    assert totals == sorted(totals) and totals[-1] > totals[0]
    assert completed == sorted(completed) and completed[-1] > completed[0]
    assert (
        any(n["status"] in ("idle", "running") for n in api.dag(run["canvas_id"])["nodes"]) or True
    )
    sim.world.advance(20)
    final = api.get(data["run_id"])
    assert final["status"] == "completed"
    assert final["duration_ms"] == 100_000
    assert "progress" not in final
    assert set(final["result"]) == {"final_output", "artifacts"}
    assert set(final["metadata"]) == {"template_used", "models_used", "credits_consumed"}
    assert final["metadata"]["template_used"] == "report"
    assert all("/" in m for m in final["metadata"]["models_used"])
    assert isinstance(final["metadata"]["credits_consumed"], int)
    dag = api.dag(final["canvas_id"])
    assert {n["status"] for n in dag["nodes"]} == {"completed"}
    api.http.close()


def test_mid_run_tasks_are_running_in_not_completed(make_simulator):
    from spine_pipeline_tests.simulator.conftest import Api, walk_tasks

    sim = make_simulator(run_seconds=(100, 100))
    api = Api(sim)
    run_id = api.create("Long research [scenario:completed]")["run_id"]
    sim.world.advance(40)
    canvas_id = api.get(run_id)["canvas_id"]
    tree = api.tasks(canvas_id)
    assert tree["not_completed"], tree
    assert all(t["status"] != "completed" for t in tree["not_completed"])
    assert any(t["status"] == "running" for t in walk_tasks(tree))
    api.http.close()


def test_first_poll_may_lack_canvas_id(make_simulator):
    from spine_pipeline_tests.simulator.conftest import Api

    sim = make_simulator(seed=11, run_seconds=(100, 100), canvas_id_on_create_rate=0.0)
    api = Api(sim)
    late = 0
    for i in range(12):
        run_id = api.create(f"p{i} [scenario:completed]")["run_id"]
        first, second = api.get(run_id), api.get(run_id)
        assert "canvas_id" in second
        late += "canvas_id" not in first
    assert 0 < late < 12
    api.http.close()


def test_terminal_field_rules_per_status(make_simulator):
    from spine_pipeline_tests.simulator.conftest import Api

    api = Api(make_simulator(seed=3))
    seen = set()
    for i in range(60):
        run = api.finished(f"Topic number {i}")
        status = run["status"]
        seen.add(status)
        assert "progress" not in run and isinstance(run["duration_ms"], int)
        if status in ("completed", "partial"):
            assert isinstance(run["result"]["final_output"], str)
            assert run["canvas_id"]
            for artifact in run["result"]["artifacts"]:
                assert set(artifact) <= {"id", "type", "name", "download_url", "size_bytes"}
                assert artifact["type"] in ("docx", "xlsx", "pptx", "html", "png")
        if status == "completed":
            assert "errors" not in run
        if status == "partial":
            assert run["errors"]
            scoped = [e for e in run["errors"] if "block_id" in e]
            assert scoped and all(
                isinstance(e["recoverable"], bool) and e["block_type"] for e in scoped
            )
            dag = api.dag(run["canvas_id"])
            by_id = {n["id"]: n for n in dag["nodes"]}
            assert all(by_id[e["block_id"]]["status"] == "error" for e in scoped)
        if status == "failed":
            assert "result" not in run and run["errors"]
            assert run["errors"][0] == {"error": "Agent execution failed"}
    assert seen == {"completed", "partial", "failed"}
    api.http.close()


def test_outcome_mix_roughly_matches_weights(make_simulator):
    sim = make_simulator(seed=99)
    from spine_pipeline.simulator.world import CreateForm

    outcomes = [sim.world.create_run(CreateForm(prompt=f"p{i}")).outcome for i in range(400)]
    share = {o: outcomes.count(o) / 400 for o in ("completed", "partial", "failed")}
    assert 0.65 < share["completed"] < 0.85
    assert 0.08 < share["partial"] < 0.23
    assert 0.04 < share["failed"] < 0.16


def test_failed_runs_sometimes_have_no_canvas(make_simulator):
    from spine_pipeline_tests.simulator.conftest import Api

    api = Api(make_simulator(seed=8))
    with_canvas = without = 0
    for i in range(16):
        run = api.finished(f"x{i} [scenario:failed]")
        assert run["status"] == "failed"
        if "canvas_id" in run:
            with_canvas += 1
            api.dag(run["canvas_id"])
        else:
            without += 1
            assert api.sim.world.ground_truth(run["run_id"]).dag is None
    assert with_canvas and without
    api.http.close()


def test_uploads_become_blocks_and_are_kept_exactly(api):
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    csv = "a,b\r\n1,café\r\n".encode()
    run = api.finished(
        "Analyse the attached [scenario:completed]",
        files=[
            ("files", ("chart.png", png, "image/png")),
            ("files", ("data.csv", csv, "text/csv")),
            ("files", ('we"ird name.txt', b"\x00\xff raw", "text/plain")),
        ],
        template="deep_research",
    )
    dag = api.dag(run["canvas_id"])
    uploads = dag["nodes"][:3]
    assert [(n["type"], n["name"]) for n in uploads] == [
        ("image-block", "chart.png"),
        ("file-block", "data.csv"),
        ("file-block", 'we"ird name.txt'),
    ]
    truth = api.sim.world.ground_truth(run["run_id"])
    assert truth.create_form.files == [
        ("chart.png", "image/png", png),
        ("data.csv", "text/csv", csv),
        ('we"ird name.txt', "text/plain", b"\x00\xff raw"),
    ]
    served = httpx.get(uploads[0]["url"])
    assert served.content == png and served.headers["content-type"] == "image/png"


def test_blocks_field_overrides_template(api):
    wanted = ["document-block", "table-block", "web-block"]
    run = api.finished("[scenario:completed] Custom", template="slides", blocks=json.dumps(wanted))
    assert run["blocks"] == wanted
    assert run["metadata"]["template_used"] == "custom"
    types = {n["type"] for n in api.dag(run["canvas_id"])["nodes"]}
    assert types == set(wanted)


@pytest.mark.parametrize("template", sorted(TEMPLATE_BLOCKS))
def test_template_block_rule(make_simulator, template):
    from spine_pipeline_tests.simulator.conftest import Api

    api = Api(make_simulator(seed=hash(template) % 1000))
    for i in range(6):
        run = api.finished(f"Research item {i} [scenario:completed]", template=template)
        nodes = api.dag(run["canvas_id"])["nodes"]
        assert 5 <= len(nodes) <= 40
        assert {n["type"] for n in nodes} <= TEMPLATE_BLOCKS[template]
        if template != "auto":
            assert run["metadata"]["template_used"] == template
    api.http.close()


def test_dag_is_acyclic_and_edges_reference_nodes(make_simulator):
    from spine_pipeline_tests.simulator.conftest import Api

    api = Api(make_simulator(seed=21))
    for i in range(15):
        run = api.finished(f"Graph {i} [scenario:completed]")
        dag = api.dag(run["canvas_id"])
        ids = [n["id"] for n in dag["nodes"]]
        assert len(ids) == len(set(ids))
        position = {node_id: i for i, node_id in enumerate(ids)}
        for edge in dag["edges"]:
            assert position[edge["source_id"]] < position[edge["target_id"]]
        # Kahn's algorithm consumes every node: no cycles.
        indegree = {n: 0 for n in ids}
        for edge in dag["edges"]:
            indegree[edge["target_id"]] += 1
        queue = [n for n, d in indegree.items() if d == 0]
        seen = 0
        while queue:
            node = queue.pop()
            seen += 1
            for edge in dag["edges"]:
                if edge["source_id"] == node:
                    indegree[edge["target_id"]] -= 1
                    if indegree[edge["target_id"]] == 0:
                        queue.append(edge["target_id"])
        assert seen == len(ids)
    api.http.close()


def test_content_is_realistic_and_awkward(make_simulator):
    from spine_pipeline_tests.simulator.conftest import Api

    api = Api(make_simulator(seed=4))
    contents, sources = [], []
    for i in range(12):
        run = api.finished(f"Market study {i} [scenario:completed]")
        for node in api.dag(run["canvas_id"])["nodes"]:
            if node["content"]:
                contents.append(node["content"])
            sources.extend(node["sources"])
    text = "".join(contents)
    assert any(len(c) > 1500 for c in contents)
    assert "\r\n" in text and "# " in text and "| " in text and "- " in text
    assert any(c != c.strip() for c in contents)
    assert any(ch in text for ch in ("é", "ï", "日本語", "📈", "🚀"))

    def typical(s):
        return isinstance(s, dict) and set(s) == {"url", "title", "snippet"} and bool(s["url"])

    objects = [s for s in sources if typical(s)]
    odd = [s for s in sources if not typical(s)]
    assert len(objects) > 5 * len(odd) > 0
    assert all(s["url"].startswith("https://") for s in objects)


def test_task_tree_shape(api):
    from spine_pipeline_tests.simulator.conftest import walk_tasks

    styles = set()
    for i in range(6):
        run = api.finished(f"Tasks {i} [scenario:partial]")
        tree = api.tasks(run["canvas_id"])
        assert tree["canvas_id"] == run["canvas_id"]
        for root in tree["completed"] + tree["not_completed"]:
            assert root["task_type"] == "parent-task"
            for persona in root["children"]:
                assert persona["task_type"] == "persona-task"
                for tool in persona["children"]:
                    assert tool["task_type"] == "tool-call-task"
                    styles.add(repr(tool.get("children", "absent")))
        assert all(t["status"] == "completed" for t in tree["completed"])
        assert any(t["status"] == "error" for t in tree["not_completed"])
        some = next(walk_tasks(tree))
        one = api.http.get(f"/v1/canvas/{run['canvas_id']}/tasks/{some['task_id']}").json()["data"]
        assert one["task_id"] == some["task_id"]
        for child in one.get("children") or []:
            assert "children" not in child  # immediate children only
    assert styles == {"None", "[]", "'absent'"}
