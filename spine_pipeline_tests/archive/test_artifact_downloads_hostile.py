"""Hostile artifact hosts: content-codings, size caps and URLs that point where they should not.

Network rule: every byte goes to loopback. Refusals of private and metadata addresses are
tested with a patched resolver and a transport that fails the test if it is ever asked to
send, so the refusal is proven to happen before any connection.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spine_pipeline.archive.archiver import ArchiveRequest
from spine_pipeline.archive.artifacts import download_artifact
from spine_pipeline.archive.layout import artifact_key
from spine_pipeline.archive.stores import open_store
from spine_pipeline.spine import (
    ArtifactRef,
    AsyncSpineClient,
    DownloadError,
    RetryPolicy,
    SpineClient,
)
from spine_pipeline_tests.fixtures.hostile import HostileServer, Reply, gzip_bomb_bytes, redirect

FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.02, jitter=0.0)
KEY = "sk_spine_hostile_canary_7f3a"
NOWHERE = "http://127.0.0.1:9"  # an API origin nothing here ever connects to
MiB = 1 << 20


# ----------------------------------------------------------------------------- a scripted host


@pytest.fixture
def host() -> Iterator[HostileServer]:
    """An artifact host on loopback: scripted replies per path, every request recorded."""
    with HostileServer() as server:
        yield server


@pytest.fixture
def other_host() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


def _signed(server: HostileServer, path: str) -> str:
    """A URL of `path` on `server` with a signature, as presigned artifact URLs have."""
    return f"{server.url}{path}?sig=s3cr3t"


def _ref(url: str, size: int | None = None) -> ArtifactRef:
    raw = {"id": "art-1", "type": "csv", "name": "data.csv", "size_bytes": size}
    return ArtifactRef("art-1", "csv", "data.csv", url, size, raw)


async def _no_refresh() -> Any:
    raise AssertionError("a refused or decoded download must not refresh the run")


def _download_sync(client: SpineClient, url: str, path: Path, **kw: Any) -> Any:
    with open(path, "w+b") as fh:
        return client.download(url, fh, **kw)


def _download_async(client_kw: dict[str, Any], url: str, path: Path, **kw: Any) -> Any:
    async def go() -> Any:
        async with AsyncSpineClient(**client_kw) as client:
            with open(path, "w+b") as fh:
                return await client.download(url, fh, **kw)

    return asyncio.run(go())


# ----------------------------------------------------------------------------- 1. content-coding

CSV = b"".join(b"%d,row %d,some repeated text\n" % (i, i) for i in range(20_000))


def _deflate_raw(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


CODINGS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "deflate-raw": _deflate_raw,
    "gzip, deflate": lambda d: zlib.compress(gzip.compress(d)),
}


def test_gzip_artifact_is_stored_decoded_with_the_hash_of_the_stored_bytes(
    host: HostileServer, archive_uri: str, tmp_path: Path
) -> None:
    """Defect 1: the decoded length was compared with the encoded Content-Length."""
    encoded = gzip.compress(CSV)
    assert len(encoded) < len(CSV) // 4
    host.route(
        "/a.csv",
        Reply(headers=[("Content-Encoding", "gzip"), ("Content-Type", "text/csv")], body=encoded),
    )
    store = open_store(archive_uri)

    async def go() -> Any:
        async with AsyncSpineClient(api_key=KEY, base_url=host.url, retry=FAST) as client:
            ref = _ref(_signed(host, "/a.csv"), size=len(CSV))
            return await download_artifact(client, store, ref, _no_refresh, tmp_path)

    outcome = asyncio.run(go())
    assert outcome.download_error is None
    assert outcome.sha256 == hashlib.sha256(CSV).hexdigest()
    assert outcome.size_bytes == len(CSV)
    assert outcome.storage_uri == artifact_key(outcome.sha256)
    assert store.get_bytes(outcome.storage_uri) == CSV
    assert host.paths() == ["/a.csv"]  # complete the first time: no retry


@pytest.mark.parametrize("coding", list(CODINGS))
def test_every_offered_coding_is_decoded_by_both_clients(
    host: HostileServer, tmp_path: Path, coding: str
) -> None:
    wire = "deflate" if coding == "deflate-raw" else coding
    host.route("/f", Reply(headers=[("Content-Encoding", wire)], body=CODINGS[coding](CSV)))
    kw = {"api_key": KEY, "base_url": host.url, "retry": FAST}
    with SpineClient(**kw) as client:
        got = _download_sync(client, _signed(host, "/f"), tmp_path / "sync")
    assert (tmp_path / "sync").read_bytes() == CSV
    assert got.sha256 == hashlib.sha256(CSV).hexdigest() and got.size_bytes == len(CSV)
    got = _download_async(kw, _signed(host, "/f"), tmp_path / "async")
    assert (tmp_path / "async").read_bytes() == CSV and got.size_bytes == len(CSV)
    assert "gzip" in (host.requests[0].header("accept-encoding") or "")


def test_a_corrupt_or_unknown_coding_is_one_error_not_retried(
    host: HostileServer, tmp_path: Path
) -> None:
    host.route("/bad", Reply(headers=[("Content-Encoding", "gzip")], body=b"not gzip at all"))
    host.route("/cut", Reply(headers=[("Content-Encoding", "gzip")], body=gzip.compress(CSV)[:-9]))
    host.route("/br", Reply(headers=[("Content-Encoding", "br")], body=b"\x0b\x02\x80hi\x03"))
    with SpineClient(api_key=KEY, base_url=host.url, retry=FAST) as client:
        for path, words in [("/bad", "corrupt"), ("/cut", "corrupt"), ("/br", "'br'")]:
            with pytest.raises(DownloadError) as caught:
                _download_sync(client, _signed(host, path), tmp_path / "x")
            assert words in caught.value.message and "\n" not in caught.value.message
    assert host.paths() == ["/bad", "/cut", "/br"]


# ----------------------------------------------------------------------------- 2. size cap


def test_a_gzip_bomb_stops_at_the_cap_with_bounded_memory(
    host: HostileServer, tmp_path: Path
) -> None:
    """64 MiB of zeros in some 64 KiB of gzip: one network read must not inflate at once."""
    bomb = gzip_bomb_bytes(64 * MiB)
    assert len(bomb) < MiB
    host.route("/bomb", Reply(headers=[("Content-Encoding", "gzip")], body=bomb))
    cap = 4 * MiB
    with SpineClient(api_key=KEY, base_url=host.url, retry=FAST) as client:
        tracemalloc.start()
        try:
            with pytest.raises(DownloadError) as caught:
                _download_sync(client, _signed(host, "/bomb"), tmp_path / "bomb", max_bytes=cap)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 24 * MiB, f"peak {peak / MiB:.0f} MiB while decoding"
    assert "size cap" in caught.value.message
    assert (tmp_path / "bomb").stat().st_size <= cap
    assert host.paths() == ["/bomb"]  # a cap is final: not retried


def test_a_declared_size_over_the_cap_stops_before_the_body(
    host: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPINE_ARTIFACT_MAX_BYTES", "1000")
    host.route("/big", Reply(body=b"x" * 5000))
    kw = {"api_key": KEY, "base_url": host.url, "retry": FAST}
    with SpineClient(**kw) as client, pytest.raises(DownloadError) as caught:
        _download_sync(client, _signed(host, "/big"), tmp_path / "big")
    assert "declared 5000 bytes" in caught.value.message
    assert "SPINE_ARTIFACT_MAX_BYTES" in caught.value.message
    assert (tmp_path / "big").stat().st_size == 0
    with pytest.raises(DownloadError):
        _download_async(kw, _signed(host, "/big"), tmp_path / "big2")
    assert host.paths() == ["/big", "/big"]


def test_an_over_cap_artifact_is_a_row_error_and_the_run_commits(
    kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 2, end to end: the archive keeps the run, names the cap, stores no bytes."""
    monkeypatch.setenv("SPINE_ARTIFACT_MAX_BYTES", "100")
    run_id = kit.submit("[scenario:completed] capped artifacts", template="report")[0]
    result = kit.archiver().archive([ArchiveRequest(run_id)])
    assert result.outcomes[0].outcome == "archived", result.outcomes[0].message
    truth = kit.sim.world.ground_truth(run_id)
    arts = {a["artifact_id"]: a for a in kit.tables()["artifacts"].to_pylist()}
    assert set(arts) == set(truth.artifacts)
    big = [i for i, t in truth.artifacts.items() if t.size > 100]
    assert big
    for art_id in big:
        assert "SPINE_ARTIFACT_MAX_BYTES" in (arts[art_id]["download_error"] or "")
        assert arts[art_id]["sha256"] is None and arts[art_id]["storage_uri"] is None
    stored = [o.key for o in kit.store.list("artifacts/")]
    assert len(stored) == len(truth.artifacts) - len(big)


# ----------------------------------------------------------------------------- 3. where from


def test_http_on_another_origin_is_refused_before_any_request(
    host: HostileServer, tmp_path: Path
) -> None:
    """Same host, another port: another origin, and plain http is not allowed there."""
    host.route("/f", Reply(body=b"internal admin page"))
    kw = {"api_key": KEY, "base_url": NOWHERE, "retry": FAST}
    with SpineClient(**kw) as client, pytest.raises(DownloadError) as caught:
        _download_sync(client, _signed(host, "/f"), tmp_path / "f")
    assert "not https" in caught.value.message and "s3cr3t" not in caught.value.message
    with pytest.raises(DownloadError):
        _download_async(kw, _signed(host, "/f"), tmp_path / "g")
    assert host.requests == []


def test_a_redirect_from_an_allowed_host_to_another_loopback_port_is_refused_at_the_hop(
    host: HostileServer,
    other_host: HostileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPINE_ARTIFACT_ALLOWED_HOSTS", f"127.0.0.1:{host.port}")
    other_host.route("/secret", Reply(body=b"loopback-only answer"))
    host.route("/start", redirect(_signed(other_host, "/secret")))
    host.route("/loop", redirect("/loop"))
    kw = {"api_key": KEY, "base_url": NOWHERE, "retry": FAST}
    with SpineClient(**kw) as client:
        with pytest.raises(DownloadError) as caught:
            _download_sync(client, _signed(host, "/start"), tmp_path / "s")
        assert "redirect 1" in caught.value.message
        with pytest.raises(DownloadError) as looped:
            _download_sync(client, _signed(host, "/loop"), tmp_path / "l")
        assert "redirects" in looped.value.message
    with pytest.raises(DownloadError):
        _download_async(kw, _signed(host, "/start"), tmp_path / "a")
    assert other_host.requests == []
    assert host.paths().count("/start") == 2 and host.paths().count("/loop") == 6


def test_redirects_within_the_rules_are_followed(host: HostileServer, tmp_path: Path) -> None:
    host.route("/r", redirect("/final", 307))
    host.route("/final", Reply(body=b"the artifact"))
    with SpineClient(api_key=KEY, base_url=host.url, retry=FAST) as client:
        got = _download_sync(client, _signed(host, "/r"), tmp_path / "r")
    assert got.size_bytes == len(b"the artifact") and host.paths() == ["/r", "/final"]
    assert all(r.header("x-api-key") is None for r in host.requests)


class Resolver:
    """Stands in for DNS: names listed resolve to the addresses given, others fail loudly."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.real = socket.getaddrinfo

    def __call__(self, host: Any, port: Any, *args: Any, **kw: Any) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name in ("127.0.0.1", "::1"):
            return self.real(host, port, *args, **kw)
        self.asked.append(name)
        if name not in self.answers:
            raise AssertionError(f"unexpected DNS lookup of {name}")
        out = []
        for address in self.answers[name]:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
            out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return out


class NoConnect:
    """A transport that records requests; `answer` None means the test fails if it is used."""

    def __init__(self, answer: bytes | None = None) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.answer is None:
            raise AssertionError(f"a connection was attempted to {request.url.host}")
        length = {"Content-Length": str(len(self.answer))}
        return httpx.Response(200, headers=length, stream=httpx.ByteStream(self.answer))


def _with_transport(client: SpineClient | AsyncSpineClient, transport: NoConnect) -> None:
    mock = httpx.MockTransport(transport)
    if isinstance(client, SpineClient):
        client._download_http.close()
        client._download_http = httpx.Client(transport=mock)
    else:  # the unused async pool holds no connection yet; nothing to close
        client._download_http = httpx.AsyncClient(transport=mock)


PRIVATE_ANSWERS = {
    "files.example.test": ["10.0.0.5"],
    "metadata.example.test": ["169.254.169.254"],
    "v6meta.example.test": ["fd00:ec2::254"],
    "mixed.example.test": ["8.8.8.8", "10.0.0.5"],
    "cgnat.example.test": ["100.64.1.2"],
}


@pytest.mark.parametrize("name", list(PRIVATE_ANSWERS))
def test_a_name_resolving_to_a_private_or_metadata_address_is_refused_before_connecting(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver = Resolver(PRIVATE_ANSWERS)
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    url = f"https://{name}/latest/meta-data?X-Amz-Signature=abc"
    transport = NoConnect()
    with SpineClient(api_key=KEY, base_url=NOWHERE, retry=FAST) as client:
        _with_transport(client, transport)
        with pytest.raises(DownloadError) as caught:
            _download_sync(client, url, tmp_path / "m")
    assert "download refused" in caught.value.message and name in caught.value.message

    async def go() -> None:
        async with AsyncSpineClient(api_key=KEY, base_url=NOWHERE, retry=FAST) as client:
            _with_transport(client, transport)
            with open(tmp_path / "n", "w+b") as fh, pytest.raises(DownloadError):
                await client.download(url, fh)

    asyncio.run(go())
    assert transport.requests == [] and resolver.asked == [name, name]


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data",
        "https://[fd00:ec2::254]/latest",
        "https://127.0.0.1:8443/x",
        "https://[::ffff:10.0.0.5]/x",
        "ftp://files.example.test/x",
        "file:///etc/passwd",
    ],
)
def test_address_literals_and_other_schemes_are_refused_without_dns(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver = Resolver({})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    transport = NoConnect()
    with SpineClient(api_key=KEY, base_url=NOWHERE, retry=FAST) as client:
        _with_transport(client, transport)
        with pytest.raises(DownloadError) as caught:
            _download_sync(client, url, tmp_path / "x")
    assert caught.value.message.startswith("download refused")
    assert transport.requests == [] and resolver.asked == []


def test_a_public_name_is_fetched_at_the_address_that_was_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name is resolved once and the connection goes to that address."""
    answers = {"cdn.example.test": ["93.184.216.34"]}
    resolver = Resolver(answers)
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    transport = NoConnect(answer=b"public bytes")
    with SpineClient(api_key=KEY, base_url=NOWHERE, retry=FAST) as client:
        _with_transport(client, transport)
        got = _download_sync(client, "https://cdn.example.test:8443/f?sig=1", tmp_path / "p")
        answers["cdn.example.test"] = ["127.0.0.1"]  # what a rebinding resolver says next
    assert got.size_bytes == len(b"public bytes") and resolver.asked == ["cdn.example.test"]
    (request,) = transport.requests
    assert request.url.host == "93.184.216.34" and request.url.port == 8443
    assert request.headers["host"] == "cdn.example.test:8443"
    assert request.extensions["sni_hostname"] == "cdn.example.test"
    assert "x-api-key" not in request.headers and KEY not in str(request.headers)


def test_an_allow_listed_host_is_fetched_over_http_at_a_loopback_address(
    host: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.route("/obj", Reply(body=b"in-cluster object store"))
    monkeypatch.setattr(socket, "getaddrinfo", Resolver({"minio.internal.test": ["127.0.0.1"]}))
    url = f"http://minio.internal.test:{host.port}/obj?X-Amz-Signature=1"
    kw = {"api_key": KEY, "base_url": NOWHERE, "retry": FAST}
    with SpineClient(**kw) as client, pytest.raises(DownloadError):
        _download_sync(client, url, tmp_path / "no")
    assert host.requests == []
    for allowed in ("minio.internal.test", f"MINIO.internal.test:{host.port}"):
        monkeypatch.setenv("SPINE_ARTIFACT_ALLOWED_HOSTS", f"other.test, {allowed}")
        with SpineClient(**kw) as client:
            assert _download_sync(client, url, tmp_path / "yes").size_bytes == 23
        assert _download_async(kw, url, tmp_path / "yes2").size_bytes == 23
    monkeypatch.setenv("SPINE_ARTIFACT_ALLOWED_HOSTS", "minio.internal.test:1")
    with SpineClient(**kw) as client, pytest.raises(DownloadError):
        _download_sync(client, url, tmp_path / "wrong-port")
    assert len(host.requests) == 4
    assert all(r.header("x-api-key") is None for r in host.requests)


def test_artifact_requests_never_carry_the_api_key_even_on_the_api_origin(
    host: HostileServer, tmp_path: Path
) -> None:
    host.route("/f", Reply(body=b"bytes"))
    kw = {"api_key": KEY, "base_url": host.url, "retry": FAST}
    with SpineClient(**kw) as client:
        _download_sync(client, _signed(host, "/f"), tmp_path / "f")
    _download_async(kw, _signed(host, "/f"), tmp_path / "g")
    assert len(host.requests) == 2
    for request in host.requests:
        assert request.header("x-api-key") is None and KEY not in str(request.headers)


def test_a_refused_artifact_is_a_row_error_and_the_run_commits(
    kit: Any, host: HostileServer
) -> None:
    """URLs minted on another origin (plain http): nothing is fetched, every row says why."""
    run_id = kit.submit("[scenario:completed] elsewhere", template="report")[0]
    kit.sim.world.base_url = host.url  # the API now hands out URLs on another origin
    result = kit.archiver().archive([ArchiveRequest(run_id)])
    assert result.outcomes[0].outcome == "archived", result.outcomes[0].message
    arts = kit.tables()["artifacts"].to_pylist()
    assert arts and all("not https" in (a["download_error"] or "") for a in arts)
    assert host.requests == []
    assert list(kit.store.list("artifacts/")) == []
