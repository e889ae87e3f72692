"""The simulator as a webhook sender: signing, envelope, transitions, faults, retries, shutdown.

The receiver here is a plain ``http.server`` on loopback that checks every delivery twice: with
an independent verifier written from the fact sheet (spine-api.md section 5) and with the
official ``spine-sdk`` ``construct_event``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from spine import SpineClient
from spine.exceptions import WebhookSignatureError

from spine_pipeline.cli import main
from spine_pipeline.simulator import SimulatorConfig, SimulatorServer, World, parse_faults
from spine_pipeline.simulator.webhooks import WebhookSender, envelope_body
from spine_pipeline.simulator.world import CreateForm
from spine_pipeline.webhooks.signature import sign as _sign
from spine_pipeline_tests.simulator.conftest import without_download_urls

SECRET = "whsec_sim_test_secret"
VECTOR_BODY = (
    b'{"id":"evt_00000000000000000000000000000001","type":"webhook.ping","created":1745251200,'
    b'"livemode":false,"api_version":"2026-04-01","data":{"object":{}}}'
)
VECTOR_V1 = "42a3e5093968800c4409c32d42e15eed8e91ee7a05c4a2e7baa18ee4597b920e"
SDK = SpineClient(api_key="sk_spine_unused")


def independent_verify(header: str, body: bytes, secret: str, tolerance: int = 300) -> bool:
    """The fact sheet's algorithm, written out again (not shared with the code under test)."""
    stamp: str | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            continue
        if key == "t":
            stamp = value
        elif key == "v1":
            signatures.append(value)
    if stamp is None or not signatures or not stamp.lstrip("-").isdigit():
        return False
    if abs(time.time() - int(stamp)) > tolerance:
        return False
    mac = hmac.new(secret.encode("utf-8"), stamp.encode() + b"." + body, hashlib.sha256)
    expected = mac.hexdigest()
    return any(hmac.compare_digest(expected, sig) for sig in signatures)


def sdk_verify(header: str, body: bytes, secret: str) -> bool:
    try:
        SDK.webhooks.construct_event(payload=body, sig_header=header, secret=secret)
    except WebhookSignatureError:
        return False
    return True


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    independent_ok: bool
    sdk_ok: bool

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """A loopback webhook endpoint: verifies, records, answers 2xx or what ``respond`` says.

    ``respond(n)`` gets the 1-based request number and returns a status code; ``hold`` makes
    every request wait (a slow receiver) until it is set or ``hold_seconds`` pass.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.respond: Callable[[int], int] = lambda n: 200
        self.hold_seconds = 0.0
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                header = self.headers.get("Spine-Signature", "")
                item = Received(
                    dict(self.headers.items()),
                    body,
                    time.time(),
                    independent_verify(header, body, SECRET),
                    sdk_verify(header, body, SECRET),
                )
                with receiver.lock:
                    receiver.received.append(item)
                    number = len(receiver.received)
                if receiver.hold_seconds:
                    receiver.release.wait(receiver.hold_seconds)
                status = receiver.respond(number)
                if not (item.independent_ok and item.sdk_ok):
                    status = 400
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/spine"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [item.event for item in self.received]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    endpoint = Receiver()
    yield endpoint
    endpoint.close()


FAST = {
    "seed": 4321,
    "run_seconds": (0.2, 0.4),
    "webhook_secret": SECRET,
    "webhook_timeout_seconds": 1.0,
    "webhook_backoff_seconds": 0.05,
    "webhook_max_attempts": 3,
}


@pytest.fixture
def sender_sim(
    make_simulator: Callable[..., SimulatorServer], receiver: Receiver
) -> Callable[..., SimulatorServer]:
    def factory(**overrides: Any) -> SimulatorServer:
        return make_simulator(**{**FAST, "webhook_url": receiver.url, **overrides})

    return factory


def create(sim: SimulatorServer, prompt: str) -> str:
    response = httpx.post(
        f"{sim.base_url}/v1/run",
        data={"prompt": prompt},
        headers={"X-API-KEY": sim.api_key},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]["run_id"]


def settle(sim: SimulatorServer, timeout: float = 20.0) -> None:
    assert sim.webhooks is not None
    assert sim.webhooks.wait_idle(timeout), sim.webhooks.records()


def by_run(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for event in events:
        run_id = event["data"]["object"].get("run_id")
        if run_id:
            out.setdefault(run_id, []).append(event["type"])
    return out


# ---------------------------------------------------------------------------- signing


def test_sign_reproduces_the_fact_sheet_test_vector():
    assert _sign("whsec_test_secret", 1745251200, VECTOR_BODY) == f"t=1745251200,v1={VECTOR_V1}"
    body = envelope_body("evt_00000000000000000000000000000001", "webhook.ping", 1745251200, {})
    assert body == VECTOR_BODY
    header = _sign("whsec_test_secret", 1745251200, body)
    event = SDK.webhooks.construct_event(
        payload=body, sig_header=header, secret="whsec_test_secret", tolerance=10**10
    )
    assert event.id == "evt_00000000000000000000000000000001"


def test_sign_agrees_with_the_sdk_and_an_independent_verifier():
    body = envelope_body(
        "evt_" + uuid.uuid4().hex, "run.completed", 1, {"final_output": "café 日本"}
    )
    header = _sign(SECRET, int(time.time()), body)
    assert sdk_verify(header, body, SECRET) and independent_verify(header, body, SECRET)
    assert not sdk_verify(header, body, SECRET + "x")
    assert not independent_verify(header, body + b" ", SECRET)
    stale = _sign(SECRET, int(time.time()) - 301, body)
    assert not sdk_verify(stale, body, SECRET) and not independent_verify(stale, body, SECRET)


# ---------------------------------------------------------------------------- transitions


def test_each_transition_sends_one_signed_event_and_partial_sends_none(sender_sim, receiver):
    sim = sender_sim()
    completed = create(sim, "[scenario:completed] heat pumps")
    failed = create(sim, "[scenario:failed] heat pumps")
    partial = create(sim, "[scenario:partial] heat pumps")
    slow = create(sim, "[scenario:slow] heat pumps")
    time.sleep(0.5)
    settle(sim)
    assert sim.world.status(partial) == "partial" and sim.world.status(slow) == "running"
    assert by_run(receiver.events()) == {
        completed: ["run.started", "run.completed"],
        failed: ["run.started", "run.failed"],
        partial: ["run.started"],
        slow: ["run.started"],
    }
    for item in receiver.received:
        assert item.independent_ok and item.sdk_ok
        event = item.event
        assert event["id"].startswith("evt_") and len(event["id"]) == 36
        assert event["livemode"] is False and event["api_version"] == "2026-04-01"
        assert abs(event["created"] - time.time()) < 30
        headers = {k.lower(): v for k, v in item.headers.items()}
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"] == "Spine-Webhooks/1.0"
        assert headers["spine-event-type"] == event["type"]
        assert headers["spine-event-id"] == str(uuid.UUID(event["id"][4:]))  # no evt_
        assert headers["spine-signature"].startswith("t=")
    records = sim.webhooks.records()
    assert [r.type for r in records].count("run.started") == 4
    assert all(r.outcome == "delivered" and r.attempts == 1 and not r.faults for r in records)
    assert {r.event_id for r in records} == {e["id"] for e in receiver.events()}
    sim.world.finish(slow)
    settle(sim)
    assert by_run(receiver.events())[slow] == ["run.started", "run.completed"]


def test_run_events_mirror_get_with_result_lifted_to_the_top(sender_sim, receiver):
    sim = sender_sim()
    completed = create(sim, "[scenario:completed] a report on wind farms")
    failed = create(sim, "[scenario:failed] a report on wind farms")
    sim.world.finish_all()
    settle(sim)
    events = {(e["data"]["object"]["run_id"], e["type"]): e for e in receiver.events()}
    obj = events[(completed, "run.completed")]["data"]["object"]
    assert "result" not in obj
    assert isinstance(obj["final_output"], str) and obj["final_output"]
    assert obj["artifacts"] and all("download_url" in a for a in obj["artifacts"])
    truth = without_download_urls(sim.world.ground_truth(completed).final_run)
    lifted = {k: v for k, v in truth.items() if k != "result"}
    lifted.update(truth["result"])
    assert {k: v for k, v in obj.items() if k != "artifacts"} == {
        k: v for k, v in lifted.items() if k != "artifacts"
    }
    assert [{k: v for k, v in a.items() if k != "download_url"} for a in obj["artifacts"]] == (
        lifted["artifacts"]
    )
    # the pre-signed URL in the event downloads the artifact
    artifact = obj["artifacts"][0]
    data = httpx.get(artifact["download_url"], timeout=10).content
    assert data == sim.world.ground_truth(completed).artifacts[artifact["id"]].content
    fail_obj = events[(failed, "run.failed")]["data"]["object"]
    assert fail_obj["status"] == "failed" and fail_obj["errors"][0]["error"]
    assert "final_output" not in fail_obj and "result" not in fail_obj
    started = events[(completed, "run.started")]["data"]["object"]
    assert started["run_id"] == completed and started["status"] == "running"


def test_ping_on_demand_and_admin_endpoints(sender_sim, receiver):
    sim = sender_sim()
    event_id = sim.webhooks.ping()
    settle(sim)
    assert receiver.events() == [
        {
            "id": event_id,
            "type": "webhook.ping",
            "created": receiver.events()[0]["created"],
            "livemode": False,
            "api_version": "2026-04-01",
            "data": {"object": {}},
        }
    ]
    with httpx.Client(base_url=sim.base_url, headers={"X-API-KEY": sim.api_key}) as http:
        second = http.post("/_sim/webhooks/ping").json()["data"]["event_id"]
        assert second != event_id
        settle(sim)
        state = http.get("/_sim/webhooks").json()["data"]
        assert [d["event_id"] for d in state["deliveries"]] == [event_id, second]
        assert state["outcomes"] == {"delivered": 2}
        assert "body" not in state["deliveries"][0]
        assert SECRET not in json.dumps(state)
        assert http.get("/_sim/state").json()["data"]["webhooks"]["types"] == {"webhook.ping": 2}
        assert httpx.get(f"{sim.base_url}/_sim/webhooks").status_code == 401


def test_admin_webhooks_without_configuration(simulator):
    with httpx.Client(
        base_url=simulator.base_url, headers={"X-API-KEY": "sk_spine_simulator"}
    ) as h:
        response = h.get("/_sim/webhooks")
        assert response.status_code == 400
        assert "not configured" in response.json()["error"]
    assert simulator.webhooks is None and simulator.world.summary()["webhooks"] is None


def test_clock_advance_triggers_terminal_events(sender_sim, receiver):
    sim = sender_sim(run_seconds=(600, 600))
    run_id = create(sim, "[scenario:completed] long one")
    settle(sim)
    assert by_run(receiver.events())[run_id] == ["run.started"]
    before = time.monotonic()
    sim.world.advance(601)
    settle(sim)
    assert time.monotonic() - before < 5
    assert by_run(receiver.events())[run_id] == ["run.started", "run.completed"]
    # the signature uses wall time, so it verifies even though the simulator clock moved
    assert all(item.sdk_ok for item in receiver.received)


# ---------------------------------------------------------------------------- faults


def test_fault_duplicate_sends_the_same_id_twice(sender_sim, receiver):
    sim = sender_sim(faults="webhook:duplicate")
    run_id = create(sim, "[scenario:completed] x")
    sim.world.finish(run_id)
    settle(sim)
    events = receiver.events()
    assert [e["type"] for e in events] == ["run.started"] * 2 + ["run.completed"] * 2
    assert events[0]["id"] == events[1]["id"] and events[2]["id"] == events[3]["id"]
    assert receiver.received[0].body == receiver.received[1].body
    records = sim.webhooks.records()
    for kind in ("run.started", "run.completed"):
        assert [r.copy for r in records if r.type == kind] == ["original", "duplicate"]
    assert all(r.faults == ("duplicate",) and r.delivered for r in records)
    assert sim.world.fault_counts["webhook:duplicate"] == 2


def test_fault_out_of_order_sends_completed_before_started(sender_sim, receiver):
    sim = sender_sim(faults="webhook:out-of-order", run_seconds=(600, 600))
    done = create(sim, "[scenario:completed] x")
    partial = create(sim, "[scenario:partial] x")
    time.sleep(0.3)
    assert receiver.events() == []  # both started events are held back
    sim.world.finish_all()
    settle(sim)
    assert by_run(receiver.events()) == {
        done: ["run.completed", "run.started"],
        partial: ["run.started"],  # released once the run ended, with no terminal event
    }
    assert all(item.sdk_ok for item in receiver.received)
    started = [r for r in sim.webhooks.records() if r.type == "run.started"]
    assert all(r.faults == ("out-of-order",) for r in started)
    # out-of-order only applies to run.started
    completed = [r for r in sim.webhooks.records() if r.type == "run.completed"]
    assert completed[0].faults == ()


def test_fault_delay_holds_the_delivery_and_its_run(sender_sim, receiver):
    sim = sender_sim(faults="webhook:delay=1.5x1")
    before = time.time()
    run_id = create(sim, "[scenario:completed] x")
    sim.world.finish(run_id)
    settle(sim)
    started, completed = receiver.received
    assert started.event["type"] == "run.started" and started.at - before >= 1.5
    assert completed.event["type"] == "run.completed"  # waited for its started event
    records = sim.webhooks.records()
    assert records[0].faults == ("delay",) and records[0].delay_seconds == 1.5
    assert records[1].faults == ()
    assert records[0].sent_at is not None and records[0].sent_at - records[0].queued_at >= 1.5
    assert started.sdk_ok  # signed when sent, not when queued


def test_fault_resend_uses_a_new_id(sender_sim, receiver):
    sim = sender_sim(faults="webhook:resend")
    run_id = create(sim, "[scenario:failed] x")
    sim.world.finish(run_id)
    settle(sim)
    events = receiver.events()
    assert [e["type"] for e in events] == ["run.started"] * 2 + ["run.failed"] * 2
    assert events[2]["id"] != events[3]["id"]
    assert {k: v for k, v in events[2].items() if k != "id"} == {
        k: v for k, v in events[3].items() if k != "id"
    }
    ids = [
        {k.lower(): v for k, v in item.headers.items()}["spine-event-id"]
        for item in receiver.received
    ]
    assert len(set(ids)) == 4
    failed = [r for r in sim.webhooks.records() if r.type == "run.failed"]
    assert [r.copy for r in failed] == ["original", "resend"]
    assert failed[1].original_id == failed[0].event_id == events[2]["id"]
    assert failed[1].event_id == events[3]["id"]
    assert all(r.faults == ("resend",) and r.delivered for r in failed)


def test_fault_drop_never_sends(sender_sim, receiver):
    sim = sender_sim(faults="webhook:drop")
    run_id = create(sim, "[scenario:completed] x")
    sim.world.finish(run_id)
    sim.webhooks.ping()
    settle(sim)
    time.sleep(0.2)
    assert receiver.received == []
    records = sim.webhooks.records()
    assert sorted((r.type, r.outcome, r.attempts) for r in records) == [
        ("run.completed", "dropped", 0),
        ("run.started", "dropped", 0),
        ("webhook.ping", "dropped", 0),
    ]
    assert not any(r.delivered for r in records)


def test_fault_bad_signature_is_refused_and_retried(sender_sim, receiver):
    sim = sender_sim(faults="webhook:bad-signaturex1", webhook_max_attempts=2)
    sim.webhooks.ping()
    good = sim.webhooks.ping()
    settle(sim)
    bad = [item for item in receiver.received if not item.sdk_ok]
    assert len(bad) == 2 and not any(item.independent_ok for item in bad)
    assert all(item.event["type"] == "webhook.ping" for item in bad)
    first, second = sim.webhooks.records()
    assert first.faults == ("bad-signature",) and not first.signature_ok
    assert (first.outcome, first.attempts, first.status_code) == ("failed", 2, 400)
    assert second.event_id == good and second.delivered and second.signature_ok


def test_faults_are_deterministic_with_the_seed(make_simulator, receiver):
    spec = "webhook:duplicate@0.3,webhook:drop@0.3,webhook:delay=0.1@0.5"

    def pattern(seed: int) -> list[tuple[str, str | None, tuple[str, ...], str, str]]:
        sim = make_simulator(**{**FAST, "seed": seed, "webhook_url": receiver.url, "faults": spec})
        for number in range(8):
            create(sim, f"[scenario:completed] run {number}")
        sim.world.finish_all()
        settle(sim)
        rows = [(r.type, r.run_id, r.faults, r.copy, r.event_id) for r in sim.webhooks.records()]
        sim.stop()
        return sorted(rows, key=lambda row: (row[1] or "", row[0], row[3]))

    first = pattern(99)
    assert pattern(99) == first
    assert pattern(100) != first
    assert {f for row in first for f in row[2]} == {"duplicate", "drop", "delay"}


def test_webhook_fault_specs():
    assert [(r.route, r.kind, r.arg) for r in parse_faults("webhook:delay=2@0.5,webhook:drop")] == [
        ("webhook", "delay", "2"),
        ("webhook", "drop", None),
    ]
    assert parse_faults("webhook:delay")[0].delay_seconds == 5.0
    star = parse_faults("*:drop")[0]
    assert star.applies_to("get") and not star.applies_to("webhook")  # * never hits webhooks
    for spec, message in [
        ("webhook:429", "fault kind '429' does not apply to route 'webhook'"),
        ("get:duplicate", "fault kind 'duplicate' does not apply to route 'get'"),
        ("webhook:delay=-1", "invalid argument '-1' for fault kind 'delay'"),
        ("webhook:resend=2", "fault kind 'resend' takes no argument"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_faults(spec)


def test_http_drop_rules_do_not_touch_webhooks(sender_sim, receiver):
    sim = sender_sim()
    sim.set_faults("*:drop")
    sim.webhooks.ping()
    settle(sim)
    assert [r.outcome for r in sim.webhooks.records()] == ["delivered"]


# ---------------------------------------------------------------------------- delivery


def test_non_2xx_is_retried_with_the_same_id(sender_sim, receiver):
    receiver.respond = lambda n: 500 if n <= 2 else 204
    sim = sender_sim()
    event_id = sim.webhooks.ping()
    settle(sim)
    assert [e["id"] for e in receiver.events()] == [event_id] * 3
    (record,) = sim.webhooks.records()
    assert (record.outcome, record.attempts, record.status_code) == ("delivered", 3, 204)
    stamps = [item.at for item in receiver.received]
    assert stamps[1] - stamps[0] >= 0.05 and stamps[2] - stamps[1] >= 0.1  # backoff doubles


def test_receiver_down_fails_after_bounded_attempts(make_simulator):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sim = make_simulator(**{**FAST, "webhook_url": f"http://127.0.0.1:{port}/hook"})
    sim.webhooks.ping()
    settle(sim)
    (record,) = sim.webhooks.records()
    assert (record.outcome, record.attempts, record.status_code) == ("failed", 3, None)
    assert record.error == "ConnectError" and not record.delivered


def test_api_keeps_answering_while_the_receiver_hangs(sender_sim, receiver):
    receiver.hold_seconds = 30
    sim = sender_sim(webhook_timeout_seconds=5.0)
    with httpx.Client(base_url=sim.base_url, headers={"X-API-KEY": sim.api_key}) as http:
        for number in range(12):  # more than the sender's 8 concurrent deliveries
            start = time.monotonic()
            response = http.post("/v1/run", data={"prompt": f"[scenario:completed] {number}"})
            run_id = response.json()["data"]["run_id"]
            assert http.get(f"/v1/run/{run_id}").status_code == 200
            assert time.monotonic() - start < 1.0
        deadline = time.monotonic() + 10
        while len(receiver.received) < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        assert len(receiver.received) == 8  # the concurrency bound
    start = time.monotonic()
    sim.stop()
    assert time.monotonic() - start < 5  # shutdown does not wait for the hung receiver
    records = sim.webhooks.records()
    assert {r.outcome for r in records} == {"cancelled"}
    # the 12 completed events waited behind their started events, which never settled
    assert sorted(r.type for r in records) == ["run.completed"] * 12 + ["run.started"] * 12
    assert sum(r.attempts for r in records) == 8


def test_timeout_per_attempt(sender_sim, receiver):
    receiver.hold_seconds = 3
    sim = sender_sim(webhook_timeout_seconds=0.3, webhook_max_attempts=2)
    sim.webhooks.ping()
    settle(sim, timeout=5)
    (record,) = sim.webhooks.records()
    assert (record.outcome, record.attempts, record.error) == ("failed", 2, "timeout")


def test_bounded_queue_records_overflow(receiver):
    receiver.hold_seconds = 30
    config = SimulatorConfig(**{**FAST, "webhook_url": receiver.url})
    world = World(config)
    sender = WebhookSender(world, max_pending=2).start()
    world.webhooks = sender
    try:
        for number in range(4):
            world.create_run(CreateForm(prompt=f"[scenario:slow] {number}"))
        deadline = time.monotonic() + 5
        while len(sender.records()) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [r.outcome for r in sender.records()] == ["pending", "pending", "overflow"] * 1 + [
            "overflow"
        ]
    finally:
        start = time.monotonic()
        sender.stop()
        assert time.monotonic() - start < 5
    assert [r.outcome for r in sender.records()] == ["cancelled"] * 2 + ["overflow"] * 2
    world.create_run(CreateForm(prompt="after stop"))  # recorded, never sent, never blocks
    assert sender.records()[-1].outcome == "cancelled"


# ---------------------------------------------------------------------------- config and CLI


def test_webhook_config_validation_and_redaction():
    for kwargs, message in [
        ({"webhook_url": "http://127.0.0.1:1/x"}, "webhook_url needs a webhook_secret"),
        ({"webhook_secret": "whsec_x"}, "webhook_secret is set but webhook_url is not"),
        ({"webhook_url": "ftp://h/x", "webhook_secret": "s"}, "http:// or https:// URL"),
        ({"webhook_url": "http://h:99999/x", "webhook_secret": "s"}, "http:// or https:// URL"),
        (
            {"webhook_url": "http://h/x", "webhook_secret": "s", "webhook_max_attempts": 0},
            "webhook_max_attempts must be >= 1",
        ),
    ]:
        with pytest.raises(ValueError, match=message):
            SimulatorConfig(**kwargs)
    config = SimulatorConfig(
        webhook_url="https://user:pw@hooks.example:8443/spine?token=abc", webhook_secret=SECRET
    )
    text = repr(config)
    assert SECRET not in text and "pw" not in text and "abc" not in text
    assert "https://hooks.example:8443/spine" in text


def test_cli_rejects_a_url_without_secret():
    result = CliRunner().invoke(main, ["simulator", "--webhook-url", "http://127.0.0.1:9/x"])
    assert result.exit_code == 2
    assert "webhook_url needs a webhook_secret" in result.output


def test_cli_simulator_sends_signed_webhooks(receiver):
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spine_pipeline.cli",
            "simulator",
            "--port",
            "0",
            "--run-seconds",
            "0.1:0.2",
            "--webhook-url",
            receiver.url,
            "--webhook-secret",
            SECRET,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first, second = proc.stdout.readline(), proc.stdout.readline()
        base = first.split("listening on ")[1].split(" ")[0]
        assert second.strip() == f"Sending signed webhooks to {receiver.url}"
        with httpx.Client(base_url=base, headers={"X-API-KEY": "sk_spine_simulator"}) as http:
            run_id = http.post("/v1/run", data={"prompt": "[scenario:completed] x"}).json()["data"][
                "run_id"
            ]
            deadline = time.monotonic() + 15
            while len(receiver.received) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert by_run(receiver.events()) == {run_id: ["run.started", "run.completed"]}
            assert all(item.sdk_ok and item.independent_ok for item in receiver.received)
            deliveries = http.get("/_sim/webhooks").json()["data"]["deliveries"]
            assert [d["outcome"] for d in deliveries] == ["delivered", "delivered"]
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=10)
    assert proc.returncode is not None
    assert SECRET not in first + second + output
