"""Big values in spooled (file-mapped) buffers: not one byte changes, and pages really leave RSS.

`spine.spool` moves a big string's body and its decoded value out of the heap, and
`release_resident` drops their pages between Parquet pages. These tests pin that the bytes
stay exactly the ones Spine sent, with and without escapes (`\\u00e9`, surrogate pairs,
emoji, a lone surrogate), with a multi-byte character cut by a decoding chunk boundary, after
any number of releases, and through the real archiver on both storage backends.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import struct
import time
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spine_pipeline.archive.archiver import Archiver, ArchiveRequest
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.parquet import encode_table
from spine_pipeline.archive.read import read_committed
from spine_pipeline.archive.stores import open_store
from spine_pipeline.spine import AsyncSpineClient, RetryPolicy
from spine_pipeline.spine import spool as spool_module
from spine_pipeline.spine.rawjson import mask_big_strings, spool_sources
from spine_pipeline.spine.spool import Pager, release_resident, spool
from spine_pipeline_tests.archive.spine_routes import run_doc
from spine_pipeline_tests.archive.test_big_strings import big_path, expected_utf8
from spine_pipeline_tests.fixtures.hostile import HostileServer, Reply, envelope

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FAST = RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.05, jitter=0.0)
CHUNK = 16  # the decoding chunk of these tests: every few characters is a boundary

# JSON source text of the big values. With escapes: \u00e9 escaped and raw, an escaped
# surrogate pair, a raw emoji, a lone surrogate, newlines; without: multi-byte UTF-8 only.
ESCAPED = (
    r"caf\u00e9 " + "caf\u00e9" + r" pair \ud83d\ude80 raw " + "\U0001f600" + r" lone \udc00 \n"
) * 40
PLAIN = "caf\u00e9 \u65e5\u672c\u8a9e \U0001f680 plain text, no escapes at all. " * 40


def _literal(source: str) -> bytes:
    return ('"' + source + '"').encode("utf-8")


def _resident_kib(address: int) -> int:
    """Rss of the mapping that starts at `address`, from /proc/self/smaps."""
    inside = False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                inside = int(head.split("-")[0], 16) == address
            elif inside and head == "Rss:":
                return int(line.split()[1])
    raise AssertionError("mapping not found")


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_release_takes_spooled_pages_out_of_rss_and_keeps_every_byte():
    piece = bytes(range(256)) * 4096  # 1 MiB
    mapped = spool(piece for _ in range(4))
    assert isinstance(mapped, mmap.mmap)
    address = pa.py_buffer(mapped).address
    assert hashlib.sha256(mapped).digest() == hashlib.sha256(piece * 4).digest()
    assert _resident_kib(address) >= 4096  # read once: resident
    release_resident()
    assert _resident_kib(address) == 0  # dropped
    assert mapped[:] == piece * 4  # read again from the file: the same bytes
    assert spool(iter(())) == b""


@pytest.mark.parametrize("text", [ESCAPED, PLAIN], ids=["escaped", "plain"])
def test_spooled_body_and_value_are_byte_exact_after_releases(text):
    lit = _literal(text)
    value = json.loads(lit)
    body = b'{"a": 1, "c": ' + lit + b', "z": "\xc3\xa9"}'
    assert any(len(c.encode("utf-8", "surrogatepass")) == 4 for c in value)
    # Chunk sizes 16 to 23 move the decoding boundaries across every multi-byte character.
    for chunk in range(CHUNK, CHUNK + 8):
        with big_path(100, chunk):
            (big,) = [b for _, b in mask_big_strings(body, 100).bigs]
            was_escaped = big.escaped
            spool_sources([big])
            assert isinstance(big.source, mmap.mmap) and big.source[:] == body
            release_resident()
            data = big.utf8()
            release_resident()
            assert bytes(data) == expected_utf8(value), chunk
            assert bytes(big.literal) == lit
            release_resident()
            assert big.text() == value
            source = big.source
            spool_sources([big])  # already spooled: left alone
            assert big.source is source
    assert was_escaped == (text is ESCAPED)
    # with escapes the value is its own spooled file; without, a view of the spooled body
    assert isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap)
    assert (data.obj is big.source) == (text is PLAIN)


@pytest.mark.parametrize("archive_uri", ["local", "s3"], indirect=True)
def test_archived_big_values_are_byte_exact_on_both_backends(archive_uri):
    # Escaped and plain big contents, and a big final_output with a lone surrogate, through
    # the real client, archiver and store; the threshold is lowered so they take the big path.
    lits = {"esc": _literal(ESCAPED), "plain": _literal(PLAIN)}
    nodes = {
        k: b'{"id": "' + k.encode() + b'", "type": "text-block", "content": ' + lit + b"}"
        for k, lit in lits.items()
    }
    dag = b'{"canvas_id": "c-big", "nodes": [' + b", ".join(nodes.values()) + b'], "edges": []}'
    final = json.loads(_literal(ESCAPED))  # json.dumps writes the lone surrogate as an escape
    run = run_doc("big", result={"final_output": final, "artifacts": []})
    json_type = [("Content-Type", "application/json")]
    routes = {
        "/v1/run/big": envelope(run),
        "/v1/canvas/c-big/dag": Reply(
            headers=json_type, body=b'{"success": true, "data": ' + dag + b"}"
        ),
        "/v1/canvas/c-big/tasks": envelope(
            {"canvas_id": "c-big", "completed": [], "not_completed": []}
        ),
    }
    store = open_store(archive_uri)
    with big_path(1024, CHUNK), HostileServer(routes) as server:

        def client() -> AsyncSpineClient:
            return AsyncSpineClient(api_key="sk_test_hostile", base_url=server.url, retry=FAST)

        result = Archiver(store, client).archive([ArchiveRequest("big", submitted_at=T0)])
    assert [o.outcome for o in result.outcomes] == ["archived"]
    log = ManifestLog(store)
    log.refresh()
    blocks = {r["block_id"]: r for r in read_committed(store, "blocks", log=log).to_pylist()}
    for key, lit in lits.items():
        row, exact = blocks[key], expected_utf8(json.loads(lit))
        assert row["content"].encode() == exact
        assert row["content_bytes"] == len(exact)
        assert row["content_sha256"] == hashlib.sha256(exact).hexdigest()
        assert row["raw_json"].encode() == nodes[key]  # the node's text exactly as sent
        assert row["raw_bytes"] is None
    (runs,) = read_committed(store, "runs", log=log).to_pylist()
    assert runs["final_output"].encode() == expected_utf8(final)
    assert runs["raw_json"] == json.dumps(run)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_parquet_writer_drops_spooled_pages_and_writes_the_same_file():
    text = ("caf\u00e9 \U0001f680 " * 100_000).encode()  # 1.2 MB: a big column
    mapped = spool([text])
    address = pa.py_buffer(mapped).address
    offsets = pa.py_buffer(struct.pack("<2q", 0, len(text)))

    def table(data) -> pa.Table:
        array = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)])
        return pa.table({"content": array})

    assert bytes(mapped[:16]) == text[:16] and _resident_kib(address) > 0
    spooled = encode_table("blocks", table(mapped))
    assert _resident_kib(address) == 0  # the sink dropped the value's pages
    assert spooled.data == encode_table("blocks", table(text)).data  # byte for byte
    assert pq.read_table(io.BytesIO(spooled.data)).column(0)[0].as_py().encode() == text


def test_past_max_maps_values_stay_in_the_heap_byte_exact(monkeypatch):
    # A hostile batch with thousands of big strings must not run out of file descriptors.
    monkeypatch.setattr(spool_module, "MAX_MAPS", 0)
    lit = _literal(ESCAPED)
    body = b'{"c": ' + lit + b"}"
    with big_path(100, CHUNK):
        (big,) = [b for _, b in mask_big_strings(body, 100).bigs]
        spool_sources([big])
        assert big.source is body  # left where it was
        data = big.utf8()
        assert not isinstance(data.obj, mmap.mmap)
        assert bytes(data) == expected_utf8(json.loads(lit))
    assert spool([b"ab", b"c"]) == b"abc"


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_the_pager_drops_pages_while_it_runs_and_stops_after():
    mapped = spool([bytes(range(256)) * 8192])  # 2 MiB
    address = pa.py_buffer(mapped).address
    with Pager(0.001) as pager:
        assert hashlib.sha256(mapped).hexdigest()  # read: mapped in
        deadline = time.monotonic() + 5
        while _resident_kib(address) and time.monotonic() < deadline:
            time.sleep(0.002)
        assert _resident_kib(address) == 0  # dropped by the pager, not by us
        assert mapped[:] == bytes(range(256)) * 8192
    assert pager._thread is not None and not pager._thread.is_alive()
