"""Invariant 5, unit level: the client, the resources and the stores never show a secret.

The end-to-end scan (demo + short soak, every log line and every byte written) is in
`test_secrets.py`; these tests pin the reprs and exception texts that such a scan relies on.
"""

import asyncio
import io
import json
import os
import uuid
from urllib.parse import quote

import dagster as dg
import pytest

from spine_pipeline.archive.archiver import RunOutcome
from spine_pipeline.archive.fetch import NotTerminalError, TransientFetchError
from spine_pipeline.archive.stores.s3 import S3Store
from spine_pipeline.defs.resources import SpineResource, build_resources
from spine_pipeline.simulator import SimulatorConfig
from spine_pipeline.spine import (
    AsyncSpineClient,
    RetryPolicy,
    ServerError,
    SpineClient,
    SpineError,
    SubmitOutcomeUnknownError,
)
from spine_pipeline.spine.redact import redact, register_secret
from spine_pipeline.spine.settings import SpineSettings
from spine_pipeline_tests.fixtures.hostile import EchoConfig, echoing_spine

CANARY = "sk_spine_REDACTIONCANARY7f3a9"


def test_resolved_spine_resource_never_shows_its_key():
    resource = SpineResource(api_key=CANARY)
    for text in (repr(resource), str(resource), f"{resource}", f"{resource!r}"):
        assert CANARY not in text and "***" in text
    assert resource.api_key == CANARY  # still usable


def test_spine_resource_inside_a_run_is_redacted(monkeypatch):
    monkeypatch.setenv("SPINE_API_KEY", CANARY)
    seen = {}

    @dg.asset
    def probe(spine: SpineResource) -> None:
        seen["repr"] = repr(spine)
        seen["str"] = str(spine)
        seen["usable"] = spine.api_key == CANARY

    resources = build_resources()
    assert CANARY not in repr(resources["spine"])  # the EnvVar, unresolved, shows its name
    with dg.instance_for_test() as instance:
        assert dg.materialize([probe], resources=resources, instance=instance).success
    assert seen["usable"]
    assert CANARY not in seen["repr"] and CANARY not in seen["str"]


def test_client_repr_settings_and_errors_hide_the_key(simulator):
    wrong = CANARY + "_wrong"
    with SpineClient(api_key=wrong, base_url=simulator.base_url) as client:
        assert wrong not in repr(client)
        assert wrong not in repr(SpineSettings.resolve(api_key=wrong))
        with pytest.raises(SpineError) as caught:
            client.get_run("00000000-0000-4000-8000-000000000000")
    assert caught.value.status_code == 401
    assert wrong not in str(caught.value) and wrong not in repr(caught.value)
    assert repr(AsyncSpineClient(api_key=wrong, base_url=simulator.base_url)).count("***") == 1


def test_simulator_config_repr_hides_its_key():
    assert CANARY not in repr(SimulatorConfig(api_key=CANARY))


def test_nothing_in_the_process_environment_leaks_through_resource_reprs(monkeypatch):
    monkeypatch.setenv("SPINE_API_KEY", CANARY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-canary-secret-ffff")
    text = " ".join(repr(r) for r in build_resources().values())
    assert CANARY not in text and "aws-canary-secret-ffff" not in text
    assert os.environ["SPINE_API_KEY"] == CANARY


# -- a server that echoes the key: every exception built from its answers hides it ----------


def _odd_key() -> str:
    """A key that does not look like `sk_spine_...`: only registration can mask it."""
    return f"odd-{uuid.uuid4().hex}-KEY"


def _assert_hidden(key: str, *texts: object) -> None:
    for text in texts:
        assert key not in str(text), text


def _exception_texts(exc: BaseException) -> list[object]:
    return [
        str(exc),
        repr(exc),
        exc.args,
        *(getattr(exc, a, None) for a in ("message", "request_id", "response_body", "cause")),
    ]


def test_spine_error_redacts_a_request_id_echoing_a_registered_key():
    key = _odd_key()
    register_secret(key)
    exc = ServerError("boom", status_code=503, request_id=f"req-{key}\r\nX-Injected: 1")
    _assert_hidden(key, *_exception_texts(exc))
    assert "\n" not in str(exc) and "***" in str(exc)


def test_errors_from_an_echoing_server_hide_a_key_of_any_shape():
    key = _odd_key()
    config = EchoConfig(key, ok_runs={"ok"}, run_status=503, create_status=500)
    fast = RetryPolicy(max_retries=1, base_delay=0.0, jitter=0.0)
    caught: list[BaseException] = []
    with (
        echoing_spine(config) as server,
        SpineClient(api_key=key, base_url=server.url, retry=fast) as client,
    ):
        for status in (401, 404, 429, 503):
            config.run_status = status
            with pytest.raises(SpineError) as info:
                client.get_run("00000000-0000-4000-8000-000000000000")
            caught.append(info.value)
        with pytest.raises(SubmitOutcomeUnknownError) as unknown:
            client.create_run("prompt")
        caught.append(unknown.value)
        ok = client.get_run("ok")
        _assert_hidden(key, repr(ok.response), ok.response.request_id)
        url = ok.artifacts[0].download_url
        for status in (410, 500):
            config.download_status = status
            with pytest.raises(SpineError) as download:
                client.download(url, io.BytesIO())
            caught.append(download.value)
    for exc in caught:
        _assert_hidden(key, *_exception_texts(exc))
    assert any("***" in str(exc) for exc in caught)


def test_async_client_errors_hide_the_echoed_key():
    key = _odd_key()

    async def poll(base_url: str) -> BaseException:
        fast = RetryPolicy(max_retries=1, base_delay=0.0, jitter=0.0)
        async with AsyncSpineClient(api_key=key, base_url=base_url, retry=fast) as client:
            try:
                await client.get_run("00000000-0000-4000-8000-000000000000")
            except SpineError as exc:
                return exc
        raise AssertionError("no error")

    with echoing_spine(EchoConfig(key, run_status=502)) as server:
        exc = asyncio.run(poll(server.url))
    _assert_hidden(key, *_exception_texts(exc))


def test_a_registered_key_is_masked_in_the_forms_a_server_echoes_it_in():
    key = f'sk_spine_{uuid.uuid4().hex}/+"x'
    register_secret(key)
    tail = key[len("sk_spine_") :]
    for text in (key, json.dumps(key), quote(key, safe=""), f"token={tail}"):
        assert tail not in redact(text) and "***" in redact(text)
        assert quote(tail, safe="") not in redact(text)


def test_archive_exceptions_redact_what_they_quote():
    key = _odd_key()
    register_secret(key)
    for exc in (
        TransientFetchError(f"dag of canvas {key}: boom"),
        NotTerminalError(f"run x is not terminal (status {key!r})"),
    ):
        _assert_hidden(key, str(exc), repr(exc))
    outcome = RunOutcome("x", "failed", f"KeyError: {key}")
    _assert_hidden(key, outcome.message, repr(outcome))


def test_an_s3_store_registers_its_aws_secret_for_redaction(monkeypatch):
    """Opening the store resolves the credentials; no request is sent (loopback anyway)."""
    secret = f"aws-canary-{uuid.uuid4().hex}"
    token = f"aws-token-{uuid.uuid4().hex}"
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDCANARYREDACTION")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    S3Store("s3://redaction-canary/archive")
    assert redact(f"signed with {secret} and {token}") == "signed with *** and ***"


def test_an_unexpected_archive_error_is_logged_and_recorded_redacted(tmp_path, monkeypatch):
    from spine_pipeline.archive import archiver
    from spine_pipeline.archive.stores import open_store
    from spine_pipeline_tests.reliability.logs import capture_logs

    key = _odd_key()
    run_id = str(uuid.uuid4())

    async def broken(client, canvas_id):
        raise RuntimeError(f"unexpected: the server said {key}")

    monkeypatch.setattr(archiver, "fetch_canvas", broken)
    with echoing_spine(EchoConfig(key, ok_runs={run_id})) as server, capture_logs() as logs:

        def factory() -> AsyncSpineClient:
            return AsyncSpineClient(api_key=key, base_url=server.url)

        result = archiver.Archiver(open_store(str(tmp_path / "archive")), factory).archive([run_id])
    (outcome,) = result.outcomes
    assert outcome.outcome == "failed" and "RuntimeError" in outcome.message
    text = logs.getvalue()
    assert "archiving run" in text and "Traceback" in text and "***" in text
    _assert_hidden(key, text, outcome.message)
