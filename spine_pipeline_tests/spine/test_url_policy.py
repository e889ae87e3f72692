"""The artifact URL rules and the bounded content decoder, as pure functions (no network)."""

from __future__ import annotations

import gzip
import ipaddress
import zlib

import pytest

from spine_pipeline.settings import split_host_port
from spine_pipeline.spine.content_coding import (
    ContentCodingError,
    IncompleteCodingError,
    StreamDecoder,
)
from spine_pipeline.spine.errors import DownloadRefusedError
from spine_pipeline.spine.url_policy import ArtifactUrlPolicy, address_problem


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.5", "private"),
        ("192.168.1.1", "private"),
        ("172.16.0.1", "private"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("192.0.0.192", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("100.64.0.1", "CGNAT"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::ffff:10.0.0.5", "private"),
        ("64:ff9b::a00:5", "private"),
        ("2002:a00:5::1", "private"),
        ("203.0.113.9", "address"),  # documentation range: not public either
    ],
)
def test_non_public_addresses_are_named(address: str, problem: str) -> None:
    found = address_problem(ipaddress.ip_address(address))
    assert found is not None and problem in found


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


def test_the_api_origin_is_scheme_host_and_port() -> None:
    policy = ArtifactUrlPolicy.for_api("http://127.0.0.1:8080/v1")
    assert policy.screen("HTTP://127.0.0.1:8080/files/x?sig=1").trusted
    for other in ("http://127.0.0.1:8081/f", "http://localhost:8080/f", "https://127.0.0.1:8080/"):
        with pytest.raises(DownloadRefusedError):
            policy.screen(other)
    public = ArtifactUrlPolicy.for_api("https://api.getspine.ai/v1")
    assert public.screen("https://api.getspine.ai:443/files/a").trusted
    screened = public.screen("https://bucket.s3.amazonaws.com/a?X-Amz-Signature=1")
    assert not screened.trusted and screened.needs_resolution


def test_allow_listed_hosts_match_with_or_without_a_port() -> None:
    policy = ArtifactUrlPolicy.for_api(
        "https://api.getspine.ai", ["minio.internal", "10.1.2.3:9000", "[::1]:8080"]
    )
    assert policy.screen("http://MINIO.internal:1234/x").trusted
    assert policy.screen("http://10.1.2.3:9000/x").trusted
    assert policy.screen("http://[::1]:8080/x").trusted
    for refused in ("http://10.1.2.3:9001/x", "https://10.1.2.3/x", "http://[::1]:8081/"):
        with pytest.raises(DownloadRefusedError):
            policy.screen(refused)


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [
        ("minio.internal", ("minio.internal", None)),
        ("Files.Corp.:9000", ("files.corp", 9000)),
        ("10.0.0.5:80", ("10.0.0.5", 80)),
        ("[::1]:8080", ("::1", 8080)),
        ("fd00:0::1", ("fd00::1", None)),
    ],
)
def test_allow_list_entries_are_read_one_way(entry: str, parsed: tuple[str, int | None]) -> None:
    assert split_host_port(entry) == parsed


@pytest.mark.parametrize(
    "entry", ["https://x", "x/y", "user@x", "x:0", "x:99999", "x:port", "[::1", "", "a b"]
)
def test_allow_list_entries_that_are_not_hosts_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(entry)


def test_the_decoder_never_returns_more_than_a_piece_per_step() -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = b"".join(packer.compress(bytes(1 << 20)) for _ in range(16)) + packer.flush()
    decoder = StreamDecoder("gzip", 64 * 1024)
    total = 0
    for piece in decoder.feed(bomb):
        assert len(piece) <= 64 * 1024
        total += len(piece)
    total += sum(len(p) for p in decoder.finish())
    assert total == 16 << 20


def test_multi_member_gzip_and_layered_codings_decode() -> None:
    two = gzip.compress(b"first ") + gzip.compress(b"second")
    decoder = StreamDecoder("gzip", 4)
    assert b"".join([*decoder.feed(two), *decoder.finish()]) == b"first second"
    layered = zlib.compress(gzip.compress(b"inner"))
    decoder = StreamDecoder("identity, gzip, deflate", 1024)
    assert b"".join([*decoder.feed(layered), *decoder.finish()]) == b"inner"


def test_an_incomplete_or_unknown_coding_is_an_error() -> None:
    decoder = StreamDecoder("gzip", 1024)
    list(decoder.feed(gzip.compress(b"x" * 1000)[:20]))
    with pytest.raises(IncompleteCodingError):
        list(decoder.finish())
    with pytest.raises(ContentCodingError):
        StreamDecoder("br", 1024)
    with pytest.raises(ContentCodingError):
        StreamDecoder("gzip, gzip, gzip, gzip", 1024)
    assert b"".join(StreamDecoder("gzip", 10).finish()) == b""  # empty body: empty file
