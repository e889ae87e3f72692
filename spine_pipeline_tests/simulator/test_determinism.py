"""Same seed + same requests = same world; ground truth equals what is served."""

from __future__ import annotations

import json

import httpx

from spine_pipeline.simulator.world import World
from spine_pipeline_tests.simulator.conftest import Api, mask_urls, without_download_urls

PROMPTS = [
    ("Quarterly report on cloud costs", {"template": "report"}),
    ("Slides about onboarding", {"template": "slides"}),
    ("Excel model of churn", {"template": "excel"}),
    ("Landing page for a bakery café", {"template": "landing_page"}),
    ("Anything goes", {}),
    ("Custom blocks", {"blocks": '["prompt-block", "memo-block", "web-block"]'}),
    ("Research with a file", {"files": [("files", ("notes.md", b"# Notes\n", "text/markdown"))]}),
]


def _snapshot(sim) -> list:
    api = Api(sim)
    out = []
    for prompt, fields in PROMPTS:
        created = api.create(prompt, **dict(fields))
        sim.world.finish(created["run_id"])
        run = api.get(created["run_id"])
        item = {"created": created, "run": without_download_urls(run)}
        if "canvas_id" in run:
            dag = api.http.get(f"/v1/canvas/{run['canvas_id']}/dag")
            tasks = api.http.get(f"/v1/canvas/{run['canvas_id']}/tasks")
            item["dag"] = mask_urls(dag.content)
            item["tasks"] = tasks.content
        item["artifacts"] = [
            httpx.get(a["download_url"]).content for a in run.get("result", {}).get("artifacts", [])
        ]
        out.append(item)
    api.http.close()
    return out


def test_same_seed_same_world(make_simulator):
    first = _snapshot(make_simulator(seed=42))
    second = _snapshot(make_simulator(seed=42))
    for a, b in zip(first, second, strict=True):
        a["run"].pop("duration_ms"), b["run"].pop("duration_ms")  # finish() time is wall clock
        assert a == b
    other = _snapshot(make_simulator(seed=43))
    assert [x["created"]["run_id"] for x in other] != [x["created"]["run_id"] for x in first]


def test_natural_durations_are_deterministic():
    from spine_pipeline.simulator import SimulatorConfig
    from spine_pipeline.simulator.world import CreateForm

    def durations() -> list[int]:
        world = World(SimulatorConfig(seed=7))
        runs = [world.create_run(CreateForm(prompt=f"p{i}")) for i in range(5)]
        world.advance(60)
        return [world.terminal_payload(r)["duration_ms"] for r in runs]

    first = durations()
    assert first == durations()
    assert all(3000 <= d <= 8000 for d in first)


def test_ground_truth_equals_what_was_served(make_simulator):
    sim = make_simulator(seed=77)
    api = Api(sim)
    for i in range(12):
        run_id = api.create(f"Study {i} [scenario:{['completed', 'partial', 'failed'][i % 3]}]")[
            "run_id"
        ]
        assert sim.world.ground_truth(run_id).final_run is None
        sim.world.finish(run_id)
        served = api.get(run_id)
        truth = sim.world.ground_truth(run_id)
        assert truth.status == served["status"]
        assert without_download_urls(truth.final_run) == without_download_urls(served)
        if served["status"] != "failed":
            assert set(truth.artifacts) == {a["id"] for a in served["result"]["artifacts"]}
            assert truth.credits == served["metadata"]["credits_consumed"]
        if truth.canvas_id:
            dag = api.http.get(f"/v1/canvas/{truth.canvas_id}/dag")
            tasks = api.http.get(f"/v1/canvas/{truth.canvas_id}/tasks")
            assert dag.content == truth.dag_body and dag.json()["data"] == truth.dag
            assert tasks.content == truth.tasks_body and tasks.json()["data"] == truth.tasks
        for artifact in served.get("result", {}).get("artifacts", []):
            assert (
                httpx.get(artifact["download_url"]).content
                == truth.artifacts[artifact["id"]].content
            )
    assert sim.world.created_count == 12 and len(sim.world.run_ids()) == 12
    api.http.close()


def test_artifacts_regenerate_identically_after_cache_eviction(make_simulator):
    sim = make_simulator(seed=5, artifact_cache_mb=0.01)
    api = Api(sim)
    runs = [api.finished(f"Report {i} [scenario:completed]", template="report") for i in range(3)]
    first = [httpx.get(a["download_url"]).content for r in runs for a in r["result"]["artifacts"]]
    again = [
        httpx.get(a["download_url"]).content
        for r in runs
        for a in api.get(r["run_id"])["result"]["artifacts"]
    ]
    assert first == again
    truth = sim.world.ground_truth(runs[0]["run_id"])
    assert [t.content for t in truth.artifacts.values()] == first[: len(truth.artifacts)]
    api.http.close()


def test_admin_endpoints(api):
    sim = api.sim
    run_id = api.create("[scenario:slow] forever")["run_id"]
    assert api.get(run_id)["status"] == "running"
    response = api.http.post("/_sim/finish", content=json.dumps({"run_id": run_id}))
    assert response.status_code == 200
    assert api.get(run_id)["status"] == "completed"
    state = api.http.get("/_sim/state").json()["data"]
    assert state["created_count"] == 1
    response = api.http.post("/_sim/advance", content=b'{"seconds": 30}')
    assert response.json()["data"]["clock_offset_seconds"] == 30
    response = api.http.post("/_sim/faults", content=b'{"spec": "get:500x1"}')
    assert response.json()["data"]["faults"] == "get:500x1"
    assert api.http.get(f"/v1/run/{run_id}").status_code == 500
    assert api.http.get(f"/v1/run/{run_id}").status_code == 200
    bad = api.http.post("/_sim/faults", content=b"get:boom")
    assert bad.status_code == 400
    assert bad.json()["error"] == "unknown fault kind 'boom' in rule 'get:boom'"
    assert sim.world.faults.spec == "get:500x1"
    api.http.post("/_sim/faults", content=b"")
    assert sim.world.faults.rules == []
