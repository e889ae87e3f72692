"""Budget and anomaly checks on real audit data, row counts and column schemas on the
materialisations, and the alert sink (a real HTTP receiver on loopback).

One archive for the module (runs are the slow part): two runs on the two previous UTC days
(the real Archiver, with past submission times, as the audit tests build history), then five
runs today through the driver's poll-sensor tick (the daemon's path: archiving still works
with `spine_run` downstream of the submit assets), then the audit job. Today's credits are
several times the days before, so the newest day is anomalous; the tests that need other
budgets change only `SPINE_CREDIT_BUDGET_*` and run the audit job again (incremental: no new
manifest, only the checks have something to say).
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from spine_pipeline import alerts
from spine_pipeline.archive.archiver import Archiver, ArchiveRequest
from spine_pipeline.archive.arrow_schemas import schema_for
from spine_pipeline.archive.stores import open_store
from spine_pipeline.audit import run_sql
from spine_pipeline.defs.names import ALERT_SENSOR, AUDIT_JOB
from spine_pipeline.driver import evaluate_sensor, execute_run, tick_and_launch
from spine_pipeline.simulator import SimulatorConfig, SimulatorServer
from spine_pipeline.spine import AsyncSpineClient
from spine_pipeline_tests.defs.conftest import Pipeline

TODAY_RUNS = 5
BUDGET = dg.AssetCheckKey(dg.AssetKey("audit_database"), "daily_credit_budget")
MONTHLY = dg.AssetCheckKey(dg.AssetKey("audit_database"), "monthly_credit_budget")
ANOMALY = dg.AssetCheckKey(dg.AssetKey("audit_database"), "no_credit_anomaly")


def _evaluations(result):
    return {
        dg.AssetCheckKey(e.event_specific_data.asset_key, e.event_specific_data.check_name): (
            e.event_specific_data
        )
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def _audit(pipeline):
    result = execute_run(pipeline.defs, pipeline.instance, AUDIT_JOB, {}, {})
    assert result.success
    return _evaluations(result)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("budget-world")
    sim = SimulatorServer(SimulatorConfig(seed=77, run_seconds=(0.2, 0.4))).start()
    mp = pytest.MonkeyPatch()
    try:
        for name, value in {
            "SPINE_API_KEY": sim.api_key,
            "SPINE_BASE_URL": sim.base_url,
            "SPINE_ARCHIVE_URI": str(base / "archive"),
            "SPINE_AUDIT_DB": str(base / "audit.duckdb"),
            "SPINE_POLL_MIN_INTERVAL_SECONDS": "0.3",
            "SPINE_POLL_MAX_INTERVAL_SECONDS": "0.6",
            "SPINE_ARCHIVE_BATCH_SIZE": "3",
        }.items():
            mp.setenv(name, value)
        for name in ("SPINE_CREDIT_BUDGET_DAILY", "SPINE_CREDIT_BUDGET_MONTHLY"):
            mp.delenv(name, raising=False)
        with dg.instance_for_test() as instance:
            pipeline = Pipeline(sim, str(base / "archive"), str(base / "audit.duckdb"), instance)
            prompt = "[scenario:completed] steady daily brief"
            past = pipeline.submit(prompt, prompt)
            pipeline.wait_terminal(past)
            noon = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
            history = [
                ArchiveRequest(
                    run_id, request_name="history", submitted_at=noon - timedelta(days=d)
                )
                for run_id, d in zip(past, (2, 1), strict=True)
            ]
            archived = Archiver(
                open_store(pipeline.archive_uri),
                lambda: AsyncSpineClient(api_key=sim.api_key, base_url=sim.base_url),
            ).archive(history)
            assert archived.ok
            pipeline.history_checks = _audit(pipeline)
            today = pipeline.submit(*[prompt] * TODAY_RUNS)
            pipeline.wait_terminal(today)
            tick = tick_and_launch(pipeline.defs, instance, None, say=lambda _: None)
            assert sorted(r for b in tick.requested for r in b) == sorted(today)
            assert not tick.failed
            pipeline.today = today
            pipeline.checks = _audit(pipeline)
            _, ((spent,),) = run_sql(
                pipeline.audit_db,
                "SELECT sum(credits) FROM run_facts WHERE day = current_date AT TIME ZONE 'UTC'",
            )
            pipeline.spent = int(spent)
            yield pipeline
    finally:
        mp.undo()
        sim.stop()


def test_archiving_through_the_driver_records_row_counts_and_the_column_schema(world):
    runs_columns = schema_for("runs").names
    batches = world.instance.fetch_materializations(dg.AssetKey("archive_batch"), limit=10).records
    written = [r.asset_materialization.metadata for r in batches]
    assert sum(m["dagster/row_count"].value for m in written) == TODAY_RUNS
    for metadata in written:
        rows = metadata["rows_by_table"].value
        assert rows["runs"] == metadata["dagster/row_count"].value == metadata["archived"].value
        assert rows["blocks"] > 0
        schema = metadata["dagster/column_schema"].schema
        assert [c.name for c in schema.columns] == runs_columns
    for run_id in world.today:
        (record,) = world.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("spine_run"), asset_partitions=[run_id]),
            limit=1,
        ).records
        assert record.asset_materialization.metadata["dagster/row_count"].value == 1
    (audit,) = world.instance.fetch_materializations(dg.AssetKey("audit_database"), limit=1).records
    metadata = audit.asset_materialization.metadata
    assert metadata["dagster/row_count"].value == TODAY_RUNS + 2  # every archived run
    assert [c.name for c in metadata["dagster/column_schema"].schema.columns] == runs_columns


def test_anomaly_check_passes_on_steady_days_and_warns_on_a_spike(world):
    steady = world.history_checks[ANOMALY]
    assert steady.passed, steady.description
    spike = world.checks[ANOMALY]
    assert not spike.passed
    assert spike.severity == dg.AssetCheckSeverity.WARN
    assert spike.description.startswith("ANOMALY")
    assert spike.metadata["credits"].value == world.spent


@pytest.mark.parametrize(
    ("fraction", "passed", "severity", "level"),
    [
        (0.5, True, None, "ok"),  # spent half the budget
        (0.9, False, dg.AssetCheckSeverity.WARN, "warn"),  # 80 % <= spent < 100 %
        (1.25, False, dg.AssetCheckSeverity.ERROR, "alert"),  # over the budget
    ],
)
def test_daily_budget_check_warns_at_80_and_errors_at_100_percent(
    world, monkeypatch, fraction, passed, severity, level
):
    assert world.checks[BUDGET].passed  # no budget set: nothing to say
    assert "not set" in world.checks[BUDGET].description
    budget = world.spent / fraction
    monkeypatch.setenv("SPINE_CREDIT_BUDGET_DAILY", repr(budget))
    monkeypatch.setenv("SPINE_CREDIT_BUDGET_MONTHLY", repr(world.spent * 1000.0))
    checks = _audit(world)
    daily = checks[BUDGET]
    assert daily.passed is passed
    assert daily.metadata["spent"].value == world.spent
    assert daily.metadata["level"].value == level
    if severity is not None:
        assert daily.severity == severity
    assert checks[MONTHLY].passed and checks[MONTHLY].metadata["level"].value == "ok"


class Receiver:
    """A real HTTP endpoint on loopback that records POSTs and answers scripted statuses."""

    def __init__(self, statuses=()):
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.statuses = list(statuses)  # consumed first; then 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == 200:
                    receiver.bodies.append(json.loads(body))
                    receiver.paths.append(self.path)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path):
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


SECRET_PATH = "/services/T000/B000/hushhush-token"


def test_a_failing_budget_check_and_an_overdue_run_are_sent_once(world, monkeypatch):
    monkeypatch.setattr(alerts, "BACKOFF_SECONDS", 0.01)
    monkeypatch.setenv("SPINE_CREDIT_BUDGET_DAILY", repr(world.spent / 2))  # 200 %: ERROR
    checks = _audit(world)
    assert checks[BUDGET].severity == dg.AssetCheckSeverity.ERROR
    four_hours_ago = datetime.now(UTC) - timedelta(hours=4)
    slow = "overdue-run-for-alerts"
    assert world.ledger.track(slow, submitted_at=four_hours_ago, now=four_hours_ago)

    # Unset: the sensor reads nothing and says why.
    tick = evaluate_sensor(world.defs, world.instance, None, ALERT_SENSOR)
    assert "SPINE_ALERT_WEBHOOK_URL is not set" in tick.skip_message

    # The receiver fails the first attempt (503): the sensor retries within the tick.
    with Receiver(statuses=[503]) as receiver:
        monkeypatch.setenv("SPINE_ALERT_WEBHOOK_URL", receiver.url(SECRET_PATH))
        first = evaluate_sensor(world.defs, world.instance, None, ALERT_SENSOR)
        assert first.skip_message.startswith("sent ")
        assert "hushhush" not in first.skip_message and "/services" not in first.skip_message
        (message,) = receiver.bodies
        assert receiver.paths == [SECRET_PATH]
        assert set(message) == {"text", "blocks"}
        assert message["blocks"][0]["type"] == "header"
        assert all(b["type"] in ("header", "section") for b in message["blocks"])
        assert "audit_database:daily_credit_budget" in message["text"]
        assert "[ERROR] check audit_database:daily_credit_budget failed" in message["text"]
        assert "200%" in message["text"]
        assert f"run {slow} overdue" in message["text"]
        # Sent once: the next ticks with the cursor send nothing new...
        second = evaluate_sensor(world.defs, world.instance, first.cursor, ALERT_SENSOR)
        assert second.skip_message == "nothing new to alert"
        assert len(receiver.bodies) == 1
        # ...until the check fails again (a new evaluation is a new alert).
        _audit(world)
        third = evaluate_sensor(world.defs, world.instance, second.cursor, ALERT_SENSOR)
        assert third.skip_message.startswith("sent ")
        (_, again) = receiver.bodies
        assert "daily_credit_budget" in again["text"] and slow not in again["text"]
    world.ledger.abandon(slow, "test over")


def test_an_undelivered_alert_is_sent_on_a_later_tick(world, monkeypatch):
    monkeypatch.setattr(alerts, "BACKOFF_SECONDS", 0.01)
    monkeypatch.setenv("SPINE_CREDIT_BUDGET_DAILY", repr(world.spent * 1.1))  # 91 %: WARN
    _audit(world)
    with Receiver(statuses=[500] * alerts.ATTEMPTS) as receiver:
        monkeypatch.setenv("SPINE_ALERT_WEBHOOK_URL", receiver.url(SECRET_PATH))
        failed = evaluate_sensor(world.defs, world.instance, None, ALERT_SENSOR)
        assert "not delivered" in failed.skip_message and failed.cursor is None
        assert receiver.bodies == []
        retried = evaluate_sensor(world.defs, world.instance, failed.cursor, ALERT_SENSOR)
        assert retried.skip_message.startswith("sent ")
        (message,) = receiver.bodies
        assert "[WARN] check audit_database:daily_credit_budget failed" in message["text"]


def test_post_alert_is_bounded_and_never_names_the_path():
    """A sink that does not answer in time: each attempt times out, the error names only
    the origin; a 4xx is not retried."""
    hold = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self):
            hold.wait(5)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}{SECRET_PATH}?token=abc"
    try:
        with pytest.raises(alerts.AlertSendError) as caught:
            alerts.post_alert(url, {"text": "x"}, timeout=0.2, attempts=2, backoff=0.0)
        assert str(caught.value) == (
            f"alert webhook http://127.0.0.1:{server.server_address[1]} not delivered: ReadTimeout"
        )
    finally:
        hold.set()
        server.shutdown()
        server.server_close()
    with Receiver(statuses=[404, 200]) as receiver:
        with pytest.raises(alerts.AlertSendError, match="HTTP 404"):
            alerts.post_alert(receiver.url(SECRET_PATH), {"text": "x"}, backoff=0.0)
        assert receiver.statuses == [200]  # not retried


def test_slack_message_escapes_lists_errors_first_and_stays_within_limits():
    many = [alerts.Alert(f"check:{i}", "WARN", f"check {i} failed", "x" * 5000) for i in range(25)]
    hostile = alerts.Alert("overdue:r1", "ERROR", "run <!channel> overdue", "a <b|c> & d")
    message = alerts.slack_message([*many, hostile])
    header, first, *rest = message["blocks"]
    assert header["text"]["text"] == "spine-pipeline: 26 alert(s), 1 error(s)"
    assert first["text"]["text"].startswith("*[ERROR] run &lt;!channel&gt; overdue*")
    assert "a &lt;b|c&gt; &amp; d" in first["text"]["text"]
    assert "<!channel>" not in json.dumps(message)
    assert len(rest) == alerts.LISTED  # 19 more alerts and the "... and N more" line
    assert rest[-1]["text"]["text"] == "... and 6 more"
    assert all(len(b["text"]["text"]) <= 3000 for b in message["blocks"])
    assert len(message["text"]) <= 4000


def test_an_unreadable_alert_cursor_starts_afresh():
    from spine_pipeline.defs.alert_sensor import AlertCursor

    for raw in (None, "", "not json", "[1, 2]", '{"checks": ["x"]}'):
        assert AlertCursor.parse(raw) == AlertCursor()
    kept = AlertCursor(checks=list(range(3000)), overdue=["b", "a"])
    again = AlertCursor.parse(kept.dump())
    assert again.checks == list(range(1000, 3000)) and again.overdue == ["a", "b"]
