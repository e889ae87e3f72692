"""The client against a real simulator on loopback: retries, the submit safety rule, redaction."""

import asyncio
import hashlib
import http.server
import logging
import threading
import time

import pytest

from spine_pipeline.spine import (
    AsyncSpineClient,
    AuthenticationError,
    BadRequestError,
    DownloadExpiredError,
    MalformedResponseError,
    NotFoundError,
    RetryPolicy,
    SpineAPIError,
    SpineClient,
    SpineConnectionError,
    SpineTimeoutError,
    SubmitOutcomeUnknownError,
    UploadFile,
)
from spine_pipeline.spine.settings import ConfigurationError

FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05, jitter=0.0)


def client_for(sim, **kw):
    kw.setdefault("retry", FAST)
    return SpineClient(api_key=sim.api_key, base_url=sim.base_url, **kw)


def wait_terminal(client, run_id, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get_run(run_id)
        if run.is_terminal:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} not terminal after {timeout}s")


def test_submit_poll_and_read_everything(simulator):
    with client_for(simulator) as client:
        created = client.create_run("Market scan of vector databases", template="report")
        assert created.status == "running"
        run = wait_terminal(client, created.run_id)
        truth = simulator.world.ground_truth(created.run_id)
        assert run.status == truth.status
        assert run.credits_consumed == truth.final_run.get("metadata", {}).get("credits_consumed")
        if run.canvas_id:
            dag = client.get_dag(run.canvas_id)
            assert dag.data == truth.dag
            tasks = client.get_tasks(run.canvas_id)
            assert tasks.data == truth.tasks
            first = next(iter(tasks.walk()), None)
            if first:
                one = client.get_task(run.canvas_id, first[2]["task_id"])
                assert one.task_id == first[2]["task_id"]


def test_base_url_with_or_without_v1(simulator):
    for base in (simulator.base_url, simulator.base_url + "/v1", simulator.base_url + "/v1/"):
        with SpineClient(api_key=simulator.api_key, base_url=base, retry=FAST) as client:
            assert client.base_url == simulator.base_url + "/v1"
            assert client.create_run("hello").run_id


def test_key_and_url_from_environment(simulator, monkeypatch):
    monkeypatch.setenv("SPINE_API_KEY", simulator.api_key)
    monkeypatch.setenv("SPINE_BASE_URL", simulator.base_url)
    with SpineClient(retry=FAST) as client:
        assert client.create_run("env configured").run_id
    monkeypatch.delenv("SPINE_API_KEY")
    with pytest.raises(ConfigurationError, match="SPINE_API_KEY is not set"):
        SpineClient()


def test_raw_text_is_kept_next_to_the_typed_view(simulator):
    with client_for(simulator) as client:
        created = client.create_run("byte exact please", template="memo")
        run = wait_terminal(client, created.run_id)
        assert run.response.data_text.startswith("{")
        import json

        assert json.loads(run.response.data_text) == run.data
        if run.canvas_id:
            dag = client.get_dag(run.canvas_id)
            truth = simulator.world.ground_truth(created.run_id)
            contents = [n.get("content") for n in dag.nodes]
            assert contents == [n.get("content") for n in truth.dag["nodes"]]


def test_api_errors_carry_message_and_request_id(simulator):
    with client_for(simulator) as client:
        with pytest.raises(BadRequestError) as info:
            client.create_run("x", template="foo")
        assert info.value.error_message.startswith(
            "Invalid template: foo. Valid templates: app, auto"
        )
        assert info.value.request_id
        with pytest.raises(BadRequestError, match="Invalid run_id: must be a valid UUID"):
            client.get_run("not-a-uuid")
        with pytest.raises(
            NotFoundError, match="Run not found: 00000000-0000-4000-8000-000000000000"
        ):
            client.get_run("00000000-0000-4000-8000-000000000000")
        with pytest.raises(BadRequestError):
            client.create_run("x", blocks=[])


def test_odd_path_parameters_cannot_change_the_route(simulator):
    with client_for(simulator) as client:
        flow = client._get_flow(
            "/run/" + __import__("urllib.parse").parse.quote("../x", safe=""), None
        )
        assert next(flow).request.url.raw_path == b"/v1/run/..%2Fx"
        with pytest.raises((BadRequestError, NotFoundError)) as info:
            client.get_run("../canvas/x/dag")
        assert "canvas" not in info.value.error_message.lower()


def test_get_retries_429_and_5xx_then_succeeds(simulator):
    patient = RetryPolicy(max_retries=5, base_delay=0.01, max_delay=0.05, jitter=0.0)
    with client_for(simulator, retry=patient) as client:
        run_id = client.create_run("retry me").run_id
        simulator.set_faults("get:429=0x2,get:503x1,get:502x1")
        run = client.get_run(run_id)
        assert run.run_id == run_id
        counts = simulator.world.fault_counts
        assert (
            counts.get("get:429") == 2 and counts.get("get:503") == 1 and counts.get("get:502") == 1
        )


def test_get_retries_dropped_connections(simulator):
    with client_for(simulator) as client:
        run_id = client.create_run("drop me").run_id
        simulator.set_faults("get:dropx2")
        assert client.get_run(run_id).run_id == run_id
        assert simulator.world.fault_counts.get("get:drop") == 2


def test_async_get_of_a_dropped_connection_is_a_connection_error(simulator):
    # The async GETs go through aiohttp, whose httpx adapter reports a dropped connection
    # as ConnectTimeout: the client must still call it a connection failure.
    with client_for(simulator) as client:
        run_id = client.create_run("dropped for good").run_id
    simulator.set_faults("get:drop")

    async def get():
        async with AsyncSpineClient(
            api_key=simulator.api_key, base_url=simulator.base_url, retry=FAST
        ) as client:
            await client.get_run(run_id)

    with pytest.raises(SpineConnectionError, match="cannot reach Spine") as info:
        asyncio.run(get())
    assert not isinstance(info.value, SpineTimeoutError)
    assert "ServerDisconnected" in str(info.value)
    # Every attempt of the retry policy was made (aiohttp itself also repeats an idempotent
    # request once when its connection is dropped, so there may be twice as many).
    assert simulator.world.fault_counts.get("get:drop", 0) >= 1 + FAST.max_retries


def test_get_gives_up_with_a_typed_error(simulator):
    with client_for(simulator) as client:
        run_id = client.create_run("always failing").run_id
        simulator.set_faults("get:500")
        with pytest.raises(SpineAPIError) as info:
            client.get_run(run_id)
        assert info.value.status_code == 500
        simulator.set_faults("get:malformed")
        with pytest.raises(MalformedResponseError):
            client.get_run(run_id)
        simulator.set_faults("get:false200")
        with pytest.raises(SpineAPIError) as info:
            client.get_run(run_id)
        assert info.value.status_code == 200


def test_unknown_status_is_kept_not_rejected(simulator):
    with client_for(simulator) as client:
        run_id = client.create_run("odd status").run_id
        simulator.set_faults("get:unknown-status")
        run = client.get_run(run_id)
        assert run.status == "queued" and not run.is_terminal


def test_submit_429_is_retried_and_bills_once(simulator):
    with client_for(simulator) as client:
        simulator.set_faults("create:429=0x2")
        before = simulator.world.created_count
        created = client.create_run("rate limited once")
        assert simulator.world.created_count == before + 1
        assert created.run_id in simulator.world.run_ids()


@pytest.mark.parametrize("fault", ["500", "502", "503", "500-after", "drop", "malformed"])
def test_submit_is_never_retried_after_it_may_have_reached_spine(simulator, fault):
    with client_for(simulator) as client:
        simulator.set_faults(f"create:{fault}x1")
        before = simulator.world.created_count
        with pytest.raises(SubmitOutcomeUnknownError) as info:
            client.create_run("ambiguous")
        assert simulator.world.fault_counts.get(f"create:{fault}") == 1
        created = simulator.world.created_count - before
        # The run may or may not exist at Spine (500-after, drop, malformed create it), but
        # the client made exactly one attempt: never a second, duplicate run.
        assert created <= 1
        assert "outcome unknown" in str(info.value)


def test_submit_connection_refused_is_not_an_unknown_outcome():
    with SpineClient(api_key="sk_spine_x", base_url="http://127.0.0.1:9", retry=FAST) as client:
        with pytest.raises(SpineConnectionError) as info:
            client.create_run("nobody home")
        assert not isinstance(info.value, SubmitOutcomeUnknownError)


def test_retried_upload_resends_every_byte(simulator, tmp_path):
    payload = bytes(range(256)) * 4096  # 1 MiB
    path = tmp_path / "data.csv"
    path.write_bytes(b"a,b\n1,2\n")
    with client_for(simulator) as client:
        simulator.set_faults("create:429=0x2")
        created = client.create_run(
            "with files",
            files=[UploadFile("blob.bin", payload), path],
            blocks=["file-block", "memo-block"],
        )
    form = simulator.world.ground_truth(created.run_id).create_form
    files = {name: data for name, _ctype, data in form.files}
    assert hashlib.sha256(files["blob.bin"]).digest() == hashlib.sha256(payload).digest()
    assert files["data.csv"] == b"a,b\n1,2\n"


def test_deadline_bounds_a_slow_api(simulator):
    with client_for(simulator) as client:
        run_id = client.create_run("slow api").run_id
        simulator.set_faults("get:latency=3000")
        with pytest.raises(SpineTimeoutError):
            client.get_run(run_id, deadline=time.monotonic() + 0.3)


def test_wrong_key_is_redacted_everywhere(simulator, caplog):
    secret = "sk_spine_TOPSECRET_ab12cd34"
    caplog.set_level(logging.DEBUG)
    client = SpineClient(api_key=secret, base_url=simulator.base_url, retry=FAST)
    assert secret not in repr(client) and secret not in repr(client.settings)
    with pytest.raises(AuthenticationError) as info:
        client.get_run("00000000-0000-4000-8000-000000000000")
    client.close()
    assert secret not in str(info.value) and secret not in repr(info.value)
    assert secret not in (info.value.response_body or "")
    assert secret not in caplog.text


def test_downloads_verify_hash_retry_truncation_and_report_expiry(simulator, tmp_path):
    with client_for(simulator) as client:
        run_id = client.create_run("[scenario:completed] a report", template="report").run_id
        run = wait_terminal(client, run_id)
        truth = simulator.world.ground_truth(run_id)
        art = run.artifacts[0]
        simulator.set_faults("download:truncatedx1")
        with open(tmp_path / "a.bin", "w+b") as fh:
            got = client.download(art.download_url, fh, expected_size=art.size_bytes)
        assert got.sha256 == truth.artifacts[art.id].sha256
        assert got.size_bytes == truth.artifacts[art.id].size
        simulator.set_faults("download:expired")
        with open(tmp_path / "b.bin", "w+b") as fh, pytest.raises(DownloadExpiredError):
            client.download(art.download_url, fh)


class _HeaderRecorder(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):
        self.seen.append(dict(self.headers))
        body = b"artifact bytes"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_downloads_never_send_the_api_key(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HeaderRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/file?sig=abc"
        client = SpineClient(
            api_key="sk_spine_dont_leak",
            base_url="http://127.0.0.1:9",
            artifact_allowed_hosts=[f"127.0.0.1:{server.server_address[1]}"],
        )
        with client, open(tmp_path / "x", "w+b") as fh:
            result = client.download(url, fh)
        assert result.size_bytes == 14
        headers = {k.lower(): v for k, v in _HeaderRecorder.seen[-1].items()}
        assert "x-api-key" not in headers
        assert "sk_spine_dont_leak" not in str(headers)
    finally:
        server.shutdown()


def test_async_client_polls_concurrently_with_the_same_rules(simulator):
    async def scenario():
        async with AsyncSpineClient(
            api_key=simulator.api_key, base_url=simulator.base_url, retry=FAST
        ) as client:
            ids = [(await client.create_run(f"async {i}")).run_id for i in range(20)]
            simulator.set_faults("get:429=0x3,get:dropx3")
            runs = await asyncio.gather(*(client.get_run(r) for r in ids))
            assert [r.run_id for r in runs] == ids
            simulator.set_faults("create:500x1")
            with pytest.raises(SubmitOutcomeUnknownError):
                await client.create_run("ambiguous async")

    asyncio.run(scenario())
