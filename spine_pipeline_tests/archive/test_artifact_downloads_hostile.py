"""Hostile artifact hosts: content-codings, size caps and URLs that point where they should not.

Network rule: every byte goes to loopback. Refusals of private and metadata addresses are
tested with a patched resolver and a transport that fails the test if it is ever asked to
send, so the refusal is proven to happen before any connection.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import http.server
import socket
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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

FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.02, jitter=0.0)
KEY = "sk_spine_hostile_canary_7f3a"
NOWHERE = "http://127.0.0.1:9"  # an API origin nothing here ever connects to
MiB = 1 << 20


# ----------------------------------------------------------------------------- a scripted host


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    declared: int | None = None  # Content-Length to send (default: len(body))


class ScriptedHost:
    """A tiny HTTP/1.0 server on 127.0.0.1: fixed replies per path, every request recorded."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply] = {}
        self.hits: list[tuple[str, dict[str, str]]] = []
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                host.hits.append((path, {k.lower(): v for k, v in self.headers.items()}))
                reply = host.routes.get(path, Reply(404, body=b"no such file"))
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                declared = len(reply.body) if reply.declared is None else reply.declared
                self.send_header("Content-Length", str(declared))
                self.end_headers()
                try:
                    for at in range(0, len(reply.body), 64 * 1024):
                        self.wfile.write(reply.body[at : at + 64 * 1024])
                except OSError:  # the client stopped reading (a cap): expected
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"{self.origin}{path}?sig=s3cr3t"

    def paths(self) -> list[str]:
        return [p for p, _ in self.hits]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host() -> Iterator[ScriptedHost]:
    server = ScriptedHost()
    yield server
    server.close()


@pytest.fixture
def other_host() -> Iterator[ScriptedHost]:
    server = ScriptedHost()
    yield server
    server.close()


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
    host: ScriptedHost, archive_uri: str, tmp_path: Path
) -> None:
    """Defect 1: the decoded length was compared with the encoded Content-Length."""
    encoded = gzip.compress(CSV)
    assert len(encoded) < len(CSV) // 4
    host.routes["/a.csv"] = Reply(
        headers={"Content-Encoding": "gzip", "Content-Type": "text/csv"}, body=encoded
    )
    store = open_store(archive_uri)

    async def go() -> Any:
        async with AsyncSpineClient(api_key=KEY, base_url=host.origin, retry=FAST) as client:
            ref = _ref(host.url("/a.csv"), size=len(CSV))
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
    host: ScriptedHost, tmp_path: Path, coding: str
) -> None:
    wire = "deflate" if coding == "deflate-raw" else coding
    host.routes["/f"] = Reply(headers={"Content-Encoding": wire}, body=CODINGS[coding](CSV))
    kw = {"api_key": KEY, "base_url": host.origin, "retry": FAST}
    with SpineClient(**kw) as client:
        got = _download_sync(client, host.url("/f"), tmp_path / "sync")
    assert (tmp_path / "sync").read_bytes() == CSV
    assert got.sha256 == hashlib.sha256(CSV).hexdigest() and got.size_bytes == len(CSV)
    got = _download_async(kw, host.url("/f"), tmp_path / "async")
    assert (tmp_path / "async").read_bytes() == CSV and got.size_bytes == len(CSV)
    assert "gzip" in host.hits[0][1].get("accept-encoding", "")


def test_a_corrupt_or_unknown_coding_is_one_error_not_retried(
    host: ScriptedHost, tmp_path: Path
) -> None:
    host.routes["/bad"] = Reply(headers={"Content-Encoding": "gzip"}, body=b"not gzip at all")
    host.routes["/cut"] = Reply(headers={"Content-Encoding": "gzip"}, body=gzip.compress(CSV)[:-9])
    host.routes["/br"] = Reply(headers={"Content-Encoding": "br"}, body=b"\x0b\x02\x80hi\x03")
    with SpineClient(api_key=KEY, base_url=host.origin, retry=FAST) as client:
        for path, words in [("/bad", "corrupt"), ("/cut", "corrupt"), ("/br", "'br'")]:
            with pytest.raises(DownloadError) as caught:
                _download_sync(client, host.url(path), tmp_path / "x")
            assert words in caught.value.message and "\n" not in caught.value.message
    assert host.paths() == ["/bad", "/cut", "/br"]


# ----------------------------------------------------------------------------- 2. size cap


def _gzip_bomb(decoded: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    parts = [packer.compress(zeros) for _ in range(decoded // MiB)]
    return b"".join(parts) + packer.flush()


def test_a_gzip_bomb_stops_at_the_cap_with_bounded_memory(
    host: ScriptedHost, tmp_path: Path
) -> None:
    """64 MiB of zeros in some 64 KiB of gzip: one network read must not inflate at once."""
    bomb = _gzip_bomb(64 * MiB)
    assert len(bomb) < MiB
    host.routes["/bomb"] = Reply(headers={"Content-Encoding": "gzip"}, body=bomb)
    cap = 4 * MiB
    with SpineClient(api_key=KEY, base_url=host.origin, retry=FAST) as client:
        tracemalloc.start()
        try:
            with pytest.raises(DownloadError) as caught:
                _download_sync(client, host.url("/bomb"), tmp_path / "bomb", max_bytes=cap)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 24 * MiB, f"peak {peak / MiB:.0f} MiB while decoding"
    assert "size cap" in caught.value.message
    assert (tmp_path / "bomb").stat().st_size <= cap
    assert host.paths() == ["/bomb"]  # a cap is final: not retried


def test_a_declared_size_over_the_cap_stops_before_the_body(
    host: ScriptedHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPINE_ARTIFACT_MAX_BYTES", "1000")
    host.routes["/big"] = Reply(body=b"x" * 5000)
    kw = {"api_key": KEY, "base_url": host.origin, "retry": FAST}
    with SpineClient(**kw) as client, pytest.raises(DownloadError) as caught:
        _download_sync(client, host.url("/big"), tmp_path / "big")
    assert "declared 5000 bytes" in caught.value.message
    assert "SPINE_ARTIFACT_MAX_BYTES" in caught.value.message
    assert (tmp_path / "big").stat().st_size == 0
    with pytest.raises(DownloadError):
        _download_async(kw, host.url("/big"), tmp_path / "big2")
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
    host: ScriptedHost, tmp_path: Path
) -> None:
    """Same host, another port: another origin, and plain http is not allowed there."""
    host.routes["/f"] = Reply(body=b"internal admin page")
    kw = {"api_key": KEY, "base_url": NOWHERE, "retry": FAST}
    with SpineClient(**kw) as client, pytest.raises(DownloadError) as caught:
        _download_sync(client, host.url("/f"), tmp_path / "f")
    assert "not https" in caught.value.message and "s3cr3t" not in caught.value.message
    with pytest.raises(DownloadError):
        _download_async(kw, host.url("/f"), tmp_path / "g")
    assert host.hits == []


def test_a_redirect_from_an_allowed_host_to_another_loopback_port_is_refused_at_the_hop(
    host: ScriptedHost,
    other_host: ScriptedHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPINE_ARTIFACT_ALLOWED_HOSTS", f"127.0.0.1:{host.port}")
    other_host.routes["/secret"] = Reply(body=b"loopback-only answer")
    host.routes["/start"] = Reply(302, {"Location": other_host.url("/secret")})
    host.routes["/loop"] = Reply(302, {"Location": "/loop"})
    kw = {"api_key": KEY, "base_url": NOWHERE, "retry": FAST}
    with SpineClient(**kw) as client:
        with pytest.raises(DownloadError) as caught:
            _download_sync(client, host.url("/start"), tmp_path / "s")
        assert "redirect 1" in caught.value.message
        with pytest.raises(DownloadError) as looped:
            _download_sync(client, host.url("/loop"), tmp_path / "l")
        assert "redirects" in looped.value.message
    with pytest.raises(DownloadError):
        _download_async(kw, host.url("/start"), tmp_path / "a")
    assert other_host.hits == []
    assert host.paths().count("/start") == 2 and host.paths().count("/loop") == 6


def test_redirects_within_the_rules_are_followed(host: ScriptedHost, tmp_path: Path) -> None:
    host.routes["/r"] = Reply(307, {"Location": "/final"})
    host.routes["/final"] = Reply(body=b"the artifact")
    with SpineClient(api_key=KEY, base_url=host.origin, retry=FAST) as client:
        got = _download_sync(client, host.url("/r"), tmp_path / "r")
    assert got.size_bytes == len(b"the artifact") and host.paths() == ["/r", "/final"]
    assert all("x-api-key" not in headers for _, headers in host.hits)


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
    host: ScriptedHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.routes["/obj"] = Reply(body=b"in-cluster object store")
    monkeypatch.setattr(socket, "getaddrinfo", Resolver({"minio.internal.test": ["127.0.0.1"]}))
    url = f"http://minio.internal.test:{host.port}/obj?X-Amz-Signature=1"
    kw = {"api_key": KEY, "base_url": NOWHERE, "retry": FAST}
    with SpineClient(**kw) as client, pytest.raises(DownloadError):
        _download_sync(client, url, tmp_path / "no")
    assert host.hits == []
    for allowed in ("minio.internal.test", f"MINIO.internal.test:{host.port}"):
        monkeypatch.setenv("SPINE_ARTIFACT_ALLOWED_HOSTS", f"other.test, {allowed}")
        with SpineClient(**kw) as client:
            assert _download_sync(client, url, tmp_path / "yes").size_bytes == 23
        assert _download_async(kw, url, tmp_path / "yes2").size_bytes == 23
    monkeypatch.setenv("SPINE_ARTIFACT_ALLOWED_HOSTS", "minio.internal.test:1")
    with SpineClient(**kw) as client, pytest.raises(DownloadError):
        _download_sync(client, url, tmp_path / "wrong-port")
    assert len(host.hits) == 4
    assert all("x-api-key" not in headers for _, headers in host.hits)


def test_artifact_requests_never_carry_the_api_key_even_on_the_api_origin(
    host: ScriptedHost, tmp_path: Path
) -> None:
    host.routes["/f"] = Reply(body=b"bytes")
    kw = {"api_key": KEY, "base_url": host.origin, "retry": FAST}
    with SpineClient(**kw) as client:
        _download_sync(client, host.url("/f"), tmp_path / "f")
    _download_async(kw, host.url("/f"), tmp_path / "g")
    assert len(host.hits) == 2
    for _, headers in host.hits:
        assert "x-api-key" not in headers and KEY not in str(headers)


def test_a_refused_artifact_is_a_row_error_and_the_run_commits(
    kit: Any, host: ScriptedHost
) -> None:
    """URLs minted on another origin (plain http): nothing is fetched, every row says why."""
    run_id = kit.submit("[scenario:completed] elsewhere", template="report")[0]
    kit.sim.world.base_url = host.origin  # the API now hands out URLs on another origin
    result = kit.archiver().archive([ArchiveRequest(run_id)])
    assert result.outcomes[0].outcome == "archived", result.outcomes[0].message
    arts = kit.tables()["artifacts"].to_pylist()
    assert arts and all("not https" in (a["download_error"] or "") for a in arts)
    assert host.hits == []
    assert list(kit.store.list("artifacts/")) == []
