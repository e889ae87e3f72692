"""`spine-pipeline info`: one read-only screen, on both backends, from empty to lagging.

Each case runs the real command (click) over a real archive (the real Archiver, the real
simulator) and a real audit database (the real refresh), and checks both the screen and
`--format json`. "Read-only" is checked, not assumed: nothing appears or changes on disk
(local) or in the bucket (S3) while `info` runs.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from spine_pipeline.archive.archiver import Archiver
from spine_pipeline.archive.identity import ArchiveIdentity
from spine_pipeline.archive.layout import IDENTITY_KEY
from spine_pipeline.archive.ledger import Ledger
from spine_pipeline.archive.signing import SigningKey, generate_keypair
from spine_pipeline.archive.stores import ObjectStore, open_store
from spine_pipeline.archive.tlog import LogPublisher
from spine_pipeline.audit import rebuild_audit_db, refresh_audit_db
from spine_pipeline.cli import main
from spine_pipeline.simulator import SimulatorServer
from spine_pipeline.spine import AsyncSpineClient, SpineClient
from spine_pipeline.webhooks.inbox import Inbox, parse_event
from spine_pipeline_tests.webhooks.helpers import SECRET, body_of, envelope


def _info(env: dict[str, str], *args: str) -> Result:
    result = CliRunner().invoke(main, ["info", *args], env=env)
    assert result.exit_code == 0, result.output
    return result


def _info_json(env: dict[str, str]) -> dict[str, Any]:
    return json.loads(_info(env, "--format", "json").output)


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every name under `path` with its size and mtime: what a read-only command keeps."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root, name)
            st = p.lstat()
            out[str(p.relative_to(path))] = (st.st_size, st.st_mtime_ns)
    return out


def _objects(store: ObjectStore) -> set[str]:
    return {i.key for i in store.list("")}


def _env(archive_uri: str, db: Path, **extra: str) -> dict[str, str]:
    return {"SPINE_ARCHIVE_URI": archive_uri, "SPINE_AUDIT_DB": str(db), **extra}


def _submit(sim: SimulatorServer, *prompts: str) -> list[str]:
    with SpineClient(api_key=sim.api_key, base_url=sim.base_url) as client:
        ids = [client.create_run(p, template="report").run_id for p in prompts]
        deadline = time.monotonic() + 30
        pending = list(ids)
        while pending:
            assert time.monotonic() < deadline, f"runs not terminal: {pending}"
            pending = [r for r in pending if not client.get_run(r).is_terminal]
            time.sleep(0.05)
    return ids


def test_info_on_a_missing_then_empty_archive_creates_nothing(
    archive_uri: str, tmp_path: Path
) -> None:
    db = tmp_path / "audit.duckdb"
    env = _env(archive_uri, db)
    local = not archive_uri.startswith("s3://")
    before = _tree(tmp_path)
    screen = _info(env).output
    doc = _info_json(env)
    assert _tree(tmp_path) == before  # neither the archive root nor the audit database
    assert not db.exists()
    assert "no audit database yet" in screen and doc["audit"]["state"] == "missing"
    assert "budgets     not set" in screen and "webhooks    not configured" in screen
    if local:
        assert "no archive here yet" in screen and doc["archive"]["state"] == "missing"
        assert not Path(archive_uri).exists()
        Path(archive_uri).mkdir()
    else:
        assert _objects(open_store(archive_uri)) == set()
    screen = _info(env).output
    doc = _info_json(env)
    assert "no manifest yet: nothing archived" in screen, screen
    assert doc["archive"]["state"] == "empty" and doc["archive"]["head_seq"] == 0
    assert doc["runs"] == {"in_flight": 0, "oldest_hours": None, "overdue": [], "problem": None}
    if not local:
        assert _objects(open_store(archive_uri)) == set()


def test_info_follows_runs_a_lagging_audit_and_runs_in_flight(
    simulator: SimulatorServer, archive_uri: str, tmp_path: Path
) -> None:
    store = open_store(archive_uri)
    private, public = generate_keypair()
    key = SigningKey.from_pem(private)

    def archive(run_ids: list[str]) -> None:
        result = Archiver(
            store,
            lambda: AsyncSpineClient(api_key=simulator.api_key, base_url=simulator.base_url),
            publisher=LogPublisher(store, key, ()),
        ).archive(Ledger(store).archive_requests(run_ids))
        assert result.ok, result.outcomes

    first, second = _submit(simulator, "info one", "info two")
    ledger = Ledger(store)
    now = datetime.now(UTC)
    for run_id in (first, second, "info-flying"):
        ledger.track(run_id, request_name="daily-brief", submitted_at=now)
    ledger.track("info-overdue", submitted_at=now - timedelta(hours=4))
    archive([first])
    db = tmp_path / "audit.duckdb"
    refresh_audit_db(archive_uri, db, store=store)
    archive([second])  # committed, not ingested: the audit lags one manifest
    event = envelope("run.completed", first)
    Inbox(store).store_event(parse_event(body_of(event)), received_at=datetime.now(UTC))
    env = _env(
        archive_uri,
        db,
        SPINE_VERIFY_KEY=public.decode(),
        SPINE_WEBHOOK_SECRET=SECRET,
        SPINE_CREDIT_BUDGET_DAILY="1",
    )

    local = not archive_uri.startswith("s3://")
    before = _tree(tmp_path) if local else _objects(store)
    doc = _info_json(env)
    screen = _info(env).output
    assert (_tree(tmp_path) if local else _objects(store)) == before

    a = doc["archive"]
    assert a["state"] == "ok" and a["problem"] is None
    assert a["head_seq"] == 2 and a["head_runs"] == 1 and a["head_key_id"] == key.key_id
    assert a["archive_id"] and len(a["archive_id"]) == 32
    assert a["checkpoint"]["size"] == 2 and a["checkpoint"]["verified"] is True
    assert a["checkpoint"]["key_ids"] == [key.key_id] and a["uncheckpointed"] == 0
    assert doc["audit"]["state"] == "ok" and doc["audit"]["ingested_seq"] == 1
    assert doc["audit"]["lag"] == 1 and doc["audit"]["refreshed_at"]
    # `second` is archived in the manifest the audit has not ingested: not in flight.
    assert doc["runs"]["in_flight"] == 2
    assert [o["run_id"] for o in doc["runs"]["overdue"]] == ["info-overdue"]
    assert 3.9 < doc["runs"]["overdue"][0]["hours"] < 4.2
    credits = simulator.world.ground_truth(first).credits
    (budget,) = doc["budgets"]
    assert budget["spent"] == credits and budget["level"] == ("alert" if credits else "ok")
    w = doc["webhooks"]
    assert w["configured"] and w["inbox_last_event_id"] == event["id"]
    assert w["audit_events"] == 0 and w["audit_last"] is None
    for line in (
        "1 manifest(s) not ingested yet",
        f"head      manifest 2, committed {a['head_committed_at']}, 1 run(s), signed by key",
        f"checkpoint size 2, {a['checkpoint']['time']}, verified with key(s) {key.key_id}",
        "runs        2 in flight, oldest 4.0 h, 1 overdue",
        "overdue   info-overdue (4.0 h)",
        f"inbox     last event {w['inbox_last']}",
    ):
        assert line in screen, (line, screen)
    assert SECRET not in screen and SECRET not in json.dumps(doc)

    refresh_audit_db(archive_uri, db, store=store)
    doc = _info_json(env)
    assert doc["audit"]["lag"] == 0 and doc["audit"]["ingested_seq"] == 2
    assert doc["runs"]["in_flight"] == 2
    assert doc["webhooks"]["audit_events"] == 1
    assert doc["webhooks"]["audit_last_type"] == "run.completed"
    assert "ingested  manifest 2: up to date" in _info(env).output


def test_info_says_what_is_wrong_with_the_audit_and_escapes_the_record(tmp_path: Path) -> None:
    archive_uri = str(tmp_path / "archive")
    store = open_store(archive_uri)
    hostile = {"base_url": "https://api.getspine.ai\x1b[2J\nFAKE ok", "kind": "simulator"}
    identity = ArchiveIdentity(uuid.uuid4().hex, "2026-01-02T03:04:05Z", {"spine": hostile})
    store.put_bytes(IDENTITY_KEY, identity.to_bytes())
    db = tmp_path / "audit.duckdb"
    env = _env(archive_uri, db)

    # Built from another archive: named, not used.
    other = tmp_path / "other"
    other.mkdir()
    rebuild_audit_db(str(other), db)
    screen = _info(env).output
    assert f"ERROR built from {other}, not from this archive" in screen, screen
    assert "\x1b" not in screen and "\nFAKE ok" not in screen
    assert "spine     base_url=https://api.getspine.ai\\x1b[2J\\nFAKE ok, kind=simulator" in screen
    assert _info_json(env)["archive"]["spine"] == hostile  # JSON keeps it as recorded

    # Not a database at all: one line, the other sections still there.
    db.unlink()
    db.write_bytes(b"not a duckdb file" * 100)
    screen = _info(env).output
    audit_lines = [line for line in screen.splitlines() if line.startswith("  ERROR")]
    assert len(audit_lines) == 1, screen
    assert "no manifest yet" in screen and "runs        0 in flight" in screen
    assert _info_json(env)["audit"]["state"] == "error"


@pytest.mark.s3
def test_info_on_an_unreachable_bucket_is_one_line(s3_env: str, tmp_path: Path) -> None:
    missing = "s3://" + s3_env.removeprefix("s3://").split("/", 1)[0] + "-absent/archive"
    screen = _info(_env(missing, tmp_path / "audit.duckdb")).output
    (line,) = [line for line in screen.splitlines() if "ERROR" in line]
    assert line.startswith("  ERROR") and "absent" in line, screen
    assert "runs        unknown (archive not read)" in screen
