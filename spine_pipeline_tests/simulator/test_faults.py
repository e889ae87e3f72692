"""Every fault kind, observed from a plain httpx client (no retries)."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from spine_pipeline_tests.simulator.conftest import Api


def _run_with_artifact(api: Api) -> tuple[str, str]:
    run = api.finished("[scenario:completed] Report on wind farms", template="report")
    return run["run_id"], run["result"]["artifacts"][0]["download_url"]


@pytest.mark.parametrize(
    ("kind", "status"),
    [("429", 429), ("500", 500), ("502", 502), ("503", 503)],
)
def test_http_error_faults_on_every_api_route(api, kind, status):
    run = api.finished("[scenario:completed] base")
    canvas = run["canvas_id"]
    api.sim.set_faults(f"*:{kind}")
    before = api.sim.world.created_count
    requests = [
        ("POST", "/v1/run", {"data": {"prompt": "x"}}),
        ("GET", f"/v1/run/{run['run_id']}", {}),
        ("GET", f"/v1/canvas/{canvas}/dag", {}),
        ("GET", f"/v1/canvas/{canvas}/tasks", {}),
        ("GET", f"/v1/canvas/{canvas}/tasks/{run['run_id']}", {}),
    ]
    for method, path, kw in requests:
        response = api.http.request(method, path, **kw)
        assert response.status_code == status, path
        assert response.headers["x-request-id"]
        if kind == "429":
            assert response.headers["retry-after"] == "1"
        if kind == "502":
            assert response.headers["content-type"].startswith("text/html")
        else:
            assert response.json()["success"] is False
    assert api.sim.world.created_count == before  # rejected before the run was created
    counts = api.sim.world.fault_counts
    assert counts[kind] == 5
    for route in ("create", "get", "dag", "tasks", "task"):
        assert counts[f"{route}:{kind}"] == 1
    response = api.http.post("/v1/run", data={"prompt": "x"})
    assert response.status_code == status


def test_create_500_message_is_the_documented_one(api):
    api.sim.set_faults("create:500x1")
    response = api.http.post("/v1/run", data={"prompt": "x"})
    assert response.json()["error"] == "An internal error occurred while creating the run"
    assert api.sim.world.created_count == 0


def test_429_with_http_date(api):
    api.sim.set_faults("get:429=date")
    run_id = api.create("x")["run_id"]
    response = api.http.get(f"/v1/run/{run_id}")
    assert response.status_code == 429
    when = email.utils.parsedate_to_datetime(response.headers["retry-after"]).timestamp()
    assert 0 < when - time.time() <= 3


def test_500_after_creates_the_run(api):
    api.sim.set_faults("create:500-afterx1")
    response = api.http.post("/v1/run", data={"prompt": "x"})
    assert response.status_code == 500
    assert response.json()["error"] == "An internal error occurred while creating the run"
    assert api.sim.world.created_count == 1
    assert api.sim.world.fault_counts["create:500-after"] == 1
    assert api.http.post("/v1/run", data={"prompt": "y"}).status_code == 200
    assert api.sim.world.created_count == 2


def test_drop_closes_the_connection_without_a_response(api):
    run_id = api.create("x")["run_id"]
    api.sim.set_faults("get:dropx1,create:dropx1")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.http.get(f"/v1/run/{run_id}")
    assert api.http.get(f"/v1/run/{run_id}").status_code == 200  # x1: only the first
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.http.post("/v1/run", data={"prompt": "dropped reply"})
    assert api.sim.world.created_count == 2  # the run was created before the drop
    assert (
        api.sim.world.ground_truth(api.sim.world.run_ids()[-1]).create_form.prompt
        == "dropped reply"
    )
    assert api.sim.world.fault_counts["drop"] == 2


def test_latency_delays_without_blocking_other_requests(api):
    import concurrent.futures

    run_id = api.create("x")["run_id"]
    api.sim.set_faults("get:latency=300")
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda _: (
                    httpx.get(
                        f"{api.sim.base_url}/v1/run/{run_id}",
                        headers={"X-API-KEY": api.sim.api_key},
                    ).status_code
                ),
                range(8),
            )
        )
    elapsed = time.monotonic() - started
    assert codes == [200] * 8
    assert 0.25 <= elapsed < 1.5  # concurrent sleeps, not serial
    assert api.sim.world.fault_counts["get:latency"] == 8


def test_latency_stacks_with_another_fault(api):
    run_id = api.create("x")["run_id"]
    api.sim.set_faults("get:latency=100,get:503x1")
    started = time.monotonic()
    assert api.http.get(f"/v1/run/{run_id}").status_code == 503
    assert time.monotonic() - started >= 0.08  # libuv timers may fire a few ms early


def test_malformed_and_false200(api):
    run_id = api.create("x")["run_id"]
    api.sim.set_faults("get:malformedx1")
    response = api.http.get(f"/v1/run/{run_id}")
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    api.sim.set_faults("get:false200x1")
    response = api.http.get(f"/v1/run/{run_id}")
    assert response.status_code == 200
    assert response.json() == {"success": False, "error": "Temporary failure, please retry"}
    assert api.http.get(f"/v1/run/{run_id}").json()["success"] is True


def test_unknown_status_fault(api):
    run_id = api.create("x")["run_id"]
    api.sim.set_faults("get:unknown-statusx1")
    assert api.get(run_id)["status"] == "queued"
    assert api.get(run_id)["status"] == "running"


def test_download_faults(api):
    _, url = _run_with_artifact(api)
    real = httpx.get(url).content
    api.sim.set_faults("download:expiredx1")
    response = httpx.get(url)
    assert response.status_code == 403 and b"Request has expired" in response.content
    assert httpx.get(url).content == real
    api.sim.set_faults("download:truncatedx1")
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url)
    with httpx.stream("GET", url) as stream:
        assert int(stream.headers["content-length"]) == len(real)
    api.sim.set_faults("download:503x1,download:429x1")
    response = httpx.get(url)
    assert response.status_code == 503 and b"<Code>SlowDown</Code>" in response.content
    response = httpx.get(url)
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert httpx.get(url).content == real


def test_truncated_download_sends_about_half(api):
    _, url = _run_with_artifact(api)
    real = httpx.get(url).content
    api.sim.set_faults("download:truncatedx1")
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url) as stream:
        for chunk in stream.iter_raw():
            received += chunk
    assert 0 < len(received) < len(real)
    assert bytes(received) == real[: len(received)]


def test_probability_is_seeded_and_counts_track(make_simulator):
    def observe(seed: int) -> list[int]:
        sim = make_simulator(seed=seed, faults="get:503@0.3")
        api = Api(sim)
        run_id = api.create("x")["run_id"]
        codes = [api.http.get(f"/v1/run/{run_id}").status_code for _ in range(60)]
        assert sim.world.fault_counts["get:503"] == codes.count(503)
        api.http.close()
        return codes

    first = observe(10)
    assert first == observe(10)
    assert 5 < first.count(503) < 35


def test_faults_from_config_and_runtime_replacement(make_simulator):
    sim = make_simulator(faults="create:503x2")
    api = Api(sim)
    codes = [api.http.post("/v1/run", data={"prompt": "x"}).status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    sim.set_faults("create:429x1")
    assert api.http.post("/v1/run", data={"prompt": "x"}).status_code == 429
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.set_faults("create:nope")
    assert sim.world.faults.spec == "create:429x1"
    api.http.close()


def test_admin_routes_are_never_faulted(api):
    api.sim.set_faults("*:500")
    assert api.http.get("/_sim/state").status_code == 200
