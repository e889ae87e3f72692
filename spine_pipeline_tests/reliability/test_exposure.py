"""Exposure: loopback-only listeners, private local archives, encryption and retention on S3.

SSE and Object Lock are tested against SeaweedFS 4.48, which supports both once configured:
SSE-S3 needs a key-encryption key (`WEED_S3_SSE_KEY`), SSE-KMS a KMS provider (its `local`
provider here) and an explicit key id; Object Lock works in governance mode on buckets created
with it. See docs/reliability.md ("Exposure").
"""

import datetime as dt
import errno
import hashlib
import os
import socket
import stat
import time
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from spine_pipeline.archive.archiver import Archiver
from spine_pipeline.archive.gc import collect_garbage
from spine_pipeline.archive.layout import credit_report_key, manifest_key, table_key
from spine_pipeline.archive.ledger import Ledger
from spine_pipeline.archive.stores import open_store
from spine_pipeline.archive.stores.s3 import S3Store, S3WriteOptions
from spine_pipeline.archive.verify import verify_archive
from spine_pipeline.audit import refresh_audit_db, run_sql
from spine_pipeline.simulator import SimulatorConfig, SimulatorServer
from spine_pipeline.simulator import server as sim_server
from spine_pipeline.spine import AsyncSpineClient, RetryPolicy, SpineClient
from spine_pipeline.submission import SubmitSpec, submit_and_record
from spine_pipeline_tests.reliability.conftest import LOCAL_KMS_KEY

FAST = RetryPolicy(max_retries=4, base_delay=0.01, max_delay=0.05, jitter=0.0)
REPO = Path(__file__).resolve().parents[2]


def _non_loopback_addresses() -> list[str]:
    """This host's IPv4 addresses other than 127.0.0.0/8 (may be empty in a sandbox)."""
    found = set()
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.connect(("192.0.2.1", 9))  # no packet is sent for UDP connect
        found.add(probe.getsockname()[0])
        probe.close()
    except OSError:
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.add(info[4][0])
    except OSError:
        pass
    return sorted(a for a in found if not a.startswith("127."))


# -- listeners ----------------------------------------------------------------------------


def test_simulator_listens_on_loopback_only():
    assert sim_server.HOST == "127.0.0.1"
    with SimulatorServer(SimulatorConfig(), port=0) as sim:
        assert sim._sock is not None and sim._sock.getsockname()[0] == "127.0.0.1"
        assert sim.base_url.startswith("http://127.0.0.1:")
        for address in _non_loopback_addresses():
            with pytest.raises(OSError) as refused:
                socket.create_connection((address, sim.port), timeout=2).close()
            assert refused.value.errno in (errno.ECONNREFUSED, errno.ETIMEDOUT, None)


def test_dagster_dev_binds_the_ui_to_loopback(monkeypatch, tmp_path):
    from spine_pipeline import dev

    seen = {}

    def fake_call(command, env):
        seen["command"], seen["env"] = command, env
        return 0

    monkeypatch.chdir(REPO)  # workspace.yaml
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    monkeypatch.setenv("SPINE_API_KEY", "sk_spine_dev_probe")  # no simulator for this check
    monkeypatch.setattr(dev, "run_child", fake_call)
    assert dev.run_dev(3000, say=lambda _: None) == 0
    command = seen["command"]
    assert command[1] == "dev" and command[command.index("--host") + 1] == "127.0.0.1"


# -- local archive permissions -------------------------------------------------------------


def test_local_archive_is_private_whatever_the_umask(simulator, tmp_path, monkeypatch):
    """Everything the pipeline writes under a local root: directories 0700, files 0600."""
    root = tmp_path / "private" / "archive"
    old = os.umask(0)
    try:
        store = open_store(str(root))
        with SpineClient(api_key=simulator.api_key, base_url=simulator.base_url, retry=FAST) as c:
            ids = [
                submit_and_record(
                    c, Ledger(store), SubmitSpec(f"[scenario:completed] private {i}"), source="test"
                ).created.run_id
                for i in range(2)
            ]
        simulator.world.finish_all()

        def client():
            return AsyncSpineClient(
                api_key=simulator.api_key, base_url=simulator.base_url, retry=FAST
            )

        assert Archiver(store, client).archive(ids).ok
        Ledger(store).abandon("00000000-0000-4000-8000-00000000abcd", "test record")
        store.put_bytes(credit_report_key(dt.datetime(2026, 1, 1)), b"<html></html>")
    finally:
        os.umask(old)
    modes = {}
    for path in [root, *root.rglob("*")]:
        modes[path] = stat.S_IMODE(path.stat().st_mode)
    dirs = {p: m for p, m in modes.items() if p.is_dir()}
    files = {p: m for p, m in modes.items() if p.is_file()}
    assert {"tables", "artifacts", "manifests", "ledger", "reports"} <= {
        p.name for p in root.iterdir()
    }
    assert files and all(m == 0o600 for m in files.values()), {
        str(p): oct(m) for p, m in files.items() if m != 0o600
    }
    assert all(m == 0o700 for m in dirs.values()), {
        str(p): oct(m) for p, m in dirs.items() if m != 0o700
    }
    # Missing parents of the root were created private too.
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700


# -- S3: server-side encryption and Object Lock ---------------------------------------------


def test_write_options_from_env_validate_and_map_to_s3_arguments():
    assert S3WriteOptions.from_env({}) == S3WriteOptions()
    opts = S3WriteOptions.from_env(
        {"SPINE_S3_SSE": "aws:kms", "SPINE_S3_SSE_KMS_KEY_ID": "alias/k"}
    )
    assert opts.args_for("tables/x") == {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "alias/k",
    }
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    lock = S3WriteOptions.from_env({"SPINE_S3_SSE": "AES256", "SPINE_S3_OBJECT_LOCK_DAYS": "30"})
    for key in ("manifests/000000000001.json", "artifacts/sha256/ab/ab12"):
        assert lock.args_for(key, now=now) == {
            "ServerSideEncryption": "AES256",
            "ObjectLockMode": "GOVERNANCE",
            "ObjectLockRetainUntilDate": now + dt.timedelta(days=30),
        }
    for key in ("tables/runs/dt=2026-01-01/b.parquet", "ledger/tracked/x.json"):
        assert lock.args_for(key, now=now) == {"ServerSideEncryption": "AES256"}
    bad = [
        {"SPINE_S3_SSE": "aes256"},
        {"SPINE_S3_SSE": "AES256", "SPINE_S3_SSE_KMS_KEY_ID": "k"},
        {"SPINE_S3_OBJECT_LOCK_DAYS": "0"},
        {"SPINE_S3_OBJECT_LOCK_DAYS": "1.5"},
        {"SPINE_S3_OBJECT_LOCK_DAYS": "forever"},
    ]
    for env in bad:
        with pytest.raises(ValueError) as caught:
            S3WriteOptions.from_env(env)
        assert "SPINE_S3_" in str(caught.value) and "\n" not in str(caught.value)


def _archive_two_runs(sim, uri: str) -> tuple[list[str], S3Store]:
    store = open_store(uri)
    assert isinstance(store, S3Store)
    with SpineClient(api_key=sim.api_key, base_url=sim.base_url, retry=FAST) as c:
        ids = [
            submit_and_record(
                c,
                Ledger(store),
                SubmitSpec(f"[scenario:completed] sse {i}", template="report"),
                source="test",
            ).created.run_id
            for i in range(2)
        ]
    sim.world.finish_all()

    def client():
        return AsyncSpineClient(api_key=sim.api_key, base_url=sim.base_url, retry=FAST)

    result = Archiver(store, client).archive(ids)
    assert result.ok and result.manifest is not None
    return ids, store


def _all_keys(client, bucket: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.s3
@pytest.mark.parametrize(
    ("mode", "key_id"), [("AES256", None), ("aws:kms", LOCAL_KMS_KEY)], ids=["sse-s3", "sse-kms"]
)
def test_every_s3_write_is_encrypted_at_rest(
    sse_env, simulator, monkeypatch, tmp_path, mode, key_id
):
    server = sse_env
    monkeypatch.setenv("SPINE_S3_SSE", mode)
    if key_id:
        monkeypatch.setenv("SPINE_S3_SSE_KMS_KEY_ID", key_id)
    bucket = server.make_bucket()
    uri = f"s3://{bucket}/archive"
    _, store = _archive_two_runs(simulator, uri)
    # A multipart upload (forced small) carries the same settings.
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 * 1024 * 1024))

    multipart = S3Store(uri, multipart_threshold=5 * 1024 * 1024, atomic_conditional_complete=True)
    multipart.put_file(
        "reports/multipart-probe.bin",  # outside the verified prefixes
        big,
        sha256_hex=hashlib.sha256(big.read_bytes()).hexdigest(),
    )
    raw = server.client()
    keys = _all_keys(raw, bucket)
    prefixes = {k.split("/")[1] for k in keys}
    assert {"tables", "artifacts", "manifests", "ledger", "reports"} <= prefixes
    for key in keys:
        head = raw.head_object(Bucket=bucket, Key=key)
        assert head.get("ServerSideEncryption") == mode, key
        if key_id:
            assert head.get("SSEKMSKeyId"), key
    # Reads are transparent: verify re-hashes everything, DuckDB's httpfs ingests it.
    assert verify_archive(store).ok
    report = refresh_audit_db(uri, tmp_path / "audit.duckdb")
    assert report.last_seq == 1
    _, rows = run_sql(tmp_path / "audit.duckdb", "select count(*) from runs")
    assert rows == [(2,)]


@pytest.mark.s3
def test_sse_s3_bytes_are_not_stored_in_the_clear(sse_env, monkeypatch):
    server = sse_env
    bucket = server.make_bucket()
    secret_marker = f"ENCRYPTED-MARKER-{uuid.uuid4().hex}".encode()
    clear_marker = f"CLEARTEXT-MARKER-{uuid.uuid4().hex}".encode()
    monkeypatch.setenv("SPINE_S3_SSE", "AES256")
    store = open_store(f"s3://{bucket}/archive")
    store.put_bytes(
        "artifacts/sha256/aa/probe", os.urandom(2048) + secret_marker + os.urandom(2048)
    )
    # Control: the same kind of object written without SSE is visible on disk, so the scan works.
    server.client().put_object(
        Bucket=bucket,
        Key="control",
        Body=os.urandom(2048) + clear_marker + os.urandom(2048),
        ContentType="application/octet-stream",
    )
    time.sleep(0.5)
    blob = b"".join(p.read_bytes() for p in (server.workdir / "data").rglob("*") if p.is_file())
    assert clear_marker in blob
    assert secret_marker not in blob


@pytest.mark.s3
def test_object_lock_governance_on_manifests_and_artifacts(
    sse_env, simulator, monkeypatch, tmp_path
):
    server = sse_env
    raw = server.client()
    bucket = f"lock-{uuid.uuid4().hex[:16]}"
    raw.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    monkeypatch.setenv("SPINE_S3_OBJECT_LOCK_DAYS", "1")
    before = dt.datetime.now(dt.UTC)
    _, store = _archive_two_runs(simulator, f"s3://{bucket}/archive")
    keys = _all_keys(raw, bucket)
    locked = [k for k in keys if k.startswith(("archive/manifests/", "archive/artifacts/"))]
    unlocked = [k for k in keys if k.startswith(("archive/tables/", "archive/ledger/"))]
    assert locked and unlocked
    for key in locked:
        retention = raw.get_object_retention(Bucket=bucket, Key=key)["Retention"]
        assert retention["Mode"] == "GOVERNANCE"
        until = retention["RetainUntilDate"].astimezone(dt.UTC)
        assert before + dt.timedelta(hours=23) < until < before + dt.timedelta(days=1, hours=1)
    for key in unlocked:
        assert "ObjectLockMode" not in raw.head_object(Bucket=bucket, Key=key)
    # A locked version cannot be deleted without the governance bypass permission...
    manifest = next(k for k in locked if "/manifests/" in k)
    version = raw.head_object(Bucket=bucket, Key=manifest)["VersionId"]
    with pytest.raises(ClientError) as denied:
        raw.delete_object(Bucket=bucket, Key=manifest, VersionId=version)
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assert verify_archive(store).ok
    # ...while uncommitted table files (garbage of a crashed batch) stay collectable.
    garbage = table_key("runs", "2026-01-01", "garbage")
    store.put_bytes(garbage, b"never committed")
    gc = collect_garbage(store, grace=dt.timedelta(0))
    assert gc.deleted == [garbage]
    assert verify_archive(store).ok


@pytest.mark.s3
def test_object_lock_on_a_bucket_without_it_is_a_clear_error(sse_env, monkeypatch):
    server = sse_env
    bucket = server.make_bucket()  # Object Lock not enabled
    monkeypatch.setenv("SPINE_S3_OBJECT_LOCK_DAYS", "1")
    store = open_store(f"s3://{bucket}/archive")
    store.put_bytes("tables/x", b"not locked, fine")
    from spine_pipeline.archive.stores import StoreError

    with pytest.raises(StoreError) as caught:
        store.put_bytes(manifest_key(1), b"{}")
    message = str(caught.value)
    assert manifest_key(1) in message and "\n" not in message
    assert server.secret_key not in message


def test_the_s3_resource_holds_no_secret(monkeypatch):
    """S3 credentials come from boto3's chain at call time; no resource field stores one."""
    from spine_pipeline.defs.resources import build_resources

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-canary-secret-for-resource-fields")
    resources = build_resources()
    assert resources["s3"].aws_secret_access_key is None
    assert "aws-canary-secret-for-resource-fields" not in repr(resources)


def test_a_new_dagster_home_is_private_whatever_the_umask(tmp_path, monkeypatch):
    from spine_pipeline.driver import prepare_dagster_home

    home = tmp_path / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    old = os.umask(0)
    try:
        assert prepare_dagster_home() == home
    finally:
        os.umask(old)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert (home / "dagster.yaml").exists()


def test_the_audit_database_is_private_whatever_the_umask(simulator, tmp_path):
    """A full copy of the archived content: files 0600, directories it creates 0700."""
    from spine_pipeline.audit import refresh_audit_db

    root = tmp_path / "archive"
    store = open_store(str(root))
    with SpineClient(api_key=simulator.api_key, base_url=simulator.base_url, retry=FAST) as c:
        run_id = submit_and_record(
            c, Ledger(store), SubmitSpec("[scenario:completed] private audit"), source="test"
        ).created.run_id
    simulator.world.finish_all()

    def client():
        return AsyncSpineClient(api_key=simulator.api_key, base_url=simulator.base_url, retry=FAST)

    assert Archiver(store, client).archive([run_id]).ok
    db = tmp_path / "private" / "audit" / "audit.duckdb"
    old = os.umask(0)
    try:
        refresh_audit_db(str(root), str(db))
        refresh_audit_db(str(root), str(db))  # the second publish turns the first into the spare
    finally:
        os.umask(old)
    files = [p for p in db.parent.iterdir() if p.is_file()]
    assert {db.name, f"{db.name}.spare"} <= {p.name for p in files}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
        p.name: "0o600" for p in files
    }
    for d in (tmp_path / "private", db.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
