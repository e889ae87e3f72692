"""Big strings (>= rawjson.BIG_STRING_BYTES) stay UTF-8 bytes from the body to Parquet.

The lean path must give exactly what the ordinary path gives: the same rows, byte for byte,
in the same Parquet tables. Most tests here lower the threshold (and the decoding chunk) so
that small, readable payloads take the big path, then compare with the ordinary path.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import random
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spine_pipeline.archive import fetch
from spine_pipeline.archive.flatten import flatten_run
from spine_pipeline.archive.parquet import encode_table
from spine_pipeline.archive.records import FetchedRun, RawDoc
from spine_pipeline.spine import MalformedResponseError, Run, SpineAPIError, rawjson
from spine_pipeline.spine.envelope import unwrap
from spine_pipeline.spine.rawjson import BigString, mask_big_strings
from spine_pipeline_tests.archive import test_flatten as tf

CTX = tf.CTX


@contextmanager
def big_path(threshold: int, chunk: int = 1 << 16) -> Iterator[None]:
    """Strings of `threshold` bytes or more take the big path, decoded `chunk` bytes at a time."""
    saved = rawjson.BIG_STRING_BYTES, rawjson.CHUNK_BYTES
    rawjson.BIG_STRING_BYTES, rawjson.CHUNK_BYTES = threshold, chunk
    try:
        yield
    finally:
        rawjson.BIG_STRING_BYTES, rawjson.CHUNK_BYTES = saved


def literal_of(value: str, ensure_ascii: bool = False) -> bytes:
    return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


def one_big(lit: bytes) -> BigString:
    (big,) = [b for _, b in mask_big_strings(b'{"c": ' + lit + b"}", threshold=3).bigs]
    return big


def expected_utf8(value: str) -> bytes:
    """What a string column stores: lone surrogates become U+FFFD."""
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value).encode()


def replaced(raw: bytes) -> str:
    """The archive's lossy decoding: one U+FFFD per invalid byte."""
    text = raw.decode("utf-8", "surrogateescape")
    return "".join("\ufffd" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)


def rows(tables: dict[str, pa.Table]) -> dict[str, list[dict[str, Any]]]:
    return {name: table.to_pylist() for name, table in tables.items()}


# ------------------------------------------------------------------- BigString decoding

TRICKY = (
    'line\nbreak tab\t quote" backslash\\ slash/ \b\f\r '
    "caf\u00e9 \u65e5\u672c \U0001f600\U0001d518 \u2028 \x7f nul\x00 "
) * 5
# Lone surrogates and an escaped pair exist only as escapes in JSON text.
ESCAPES = " lone \\ud800 and \\udfff, pair \\ud83d\\ude80, \\u00e9\\/ end"


@pytest.mark.parametrize("ensure_ascii", [False, True])
def test_escapes_and_pairs_decode_exactly_at_every_chunk_boundary(ensure_ascii):
    # Every chunk size from 16 to 40 bytes moves the boundaries across every escape,
    # surrogate pair and multi-byte UTF-8 sequence.
    lit = (json.dumps(TRICKY, ensure_ascii=ensure_ascii)[:-1] + ESCAPES * 3 + '"').encode()
    value = json.loads(lit)
    assert "\ud800" in value and "\U0001f680" in value
    for chunk in range(16, 41):
        with big_path(3, chunk):
            big = one_big(lit)
            assert big.text() == value
            assert bytes(big.utf8()) == expected_utf8(value), chunk
            assert big.utf8_len == len(expected_utf8(value))
            assert big.escaped and big.utf8_valid
            assert bytes(big.literal) == lit


def test_pairs_split_at_every_offset():
    pair = "\\ud83d\\ude00"
    for pad in range(0, 20):
        lit = b'"' + b"x" * pad + (pair * 3).encode() + b'"'
        with big_path(3, 16):
            big = one_big(lit)
            assert big.text() == "x" * pad + "\U0001f600" * 3
            assert bytes(big.utf8()) == ("x" * pad + "\U0001f600" * 3).encode()


def test_unescaped_literal_is_a_zero_copy_view_of_the_body():
    body = b'{"c": "' + "non-BMP \U0001d518 emoji \U0001f600 ".encode() * 50 + b'"}'
    with big_path(3, 16):
        (big,) = [b for _, b in mask_big_strings(body, 3).bigs]
    data = big.utf8()
    assert isinstance(data, memoryview) and data.obj is body
    assert bytes(data) == json.loads(body)["c"].encode()


def test_invalid_utf8_inside_a_big_string_is_one_replacement_per_byte():
    raw = b'"ok \xe2\x82\xac \xff\xfe then \xc3( and \xed\xa0\x80 end \\n"'
    expected = json.loads(replaced(raw))
    assert expected.count("\ufffd") == 6
    for chunk in range(16, 30):
        with big_path(3, chunk):
            big = one_big(raw)
            assert not big.utf8_valid
            assert big.text() == expected
            assert bytes(big.utf8()) == expected.encode()
            assert bytes(big.lossy_literal()) == replaced(raw).encode()
            assert bytes(big.literal) == raw


@pytest.mark.parametrize(
    "literal",
    [b'"bad \\x escape"', b'"short \\u12G4"', b'"raw \x01 control"', b'"cut \\u12"', b'"end \\'],
)
def test_invalid_big_literals_are_rejected_like_json_loads(literal):
    text = b'{"c": ' + literal + b"}"
    with pytest.raises(ValueError):
        json.loads(text)
    with big_path(3, 16), pytest.raises(ValueError):
        RawDoc.parse(text)
    body = b'{"success": true, "data": ' + text + b"}"
    with big_path(3, 16), pytest.raises(MalformedResponseError):
        unwrap(200, body, None)


def test_keys_are_never_masked_and_structure_is_unchanged():
    text = '{"' + "k" * 50 + '": "' + "v" * 50 + '", "list": ["' + "w" * 50 + '", 1]}'
    with big_path(20):
        d = RawDoc.parse(text)
    assert len(d.bigs) == 2
    assert d.text == '{"' + "k" * 50 + '": "", "list": ["", 1]}'
    value = d.value
    assert list(value) == ["k" * 50, "list"]
    assert value["k" * 50].text() == "v" * 50 and value["list"][0].text() == "w" * 50
    assert d.original_bytes() == text.encode()


# ------------------------------------------------------- the big path equals the small path

CASES: dict[str, Callable[[], FetchedRun]] = {
    "fixture": lambda: tf.make_run(),
    "exact": lambda: tf.make_run(
        run=json.dumps(
            dict(tf.FIXTURE_RUN, result={"final_output": "".join(tf.EXACT), "artifacts": []})
        ),
        dag=json.dumps(
            tf.dag_with(*[tf.node(id=f"n{i}", content=c) for i, c in enumerate(tf.EXACT)])
        ),
    ),
    "exact_ascii": lambda: tf.make_run(
        run=json.dumps(
            dict(tf.FIXTURE_RUN, result={"final_output": "".join(tf.EXACT), "artifacts": []}),
            ensure_ascii=True,
        ),
        dag=json.dumps(
            tf.dag_with(*[tf.node(id=f"n{i}", content=c) for i, c in enumerate(tf.EXACT)]),
            ensure_ascii=True,
        ),
    ),
    "signed_urls": lambda: tf.make_run(run=tf.RUN_WITH_URLS),
    "block_urls": lambda: tf.make_run(
        dag=tf.dag_with(
            tf.node(id="web", type="web-block", url="https://news.example/a?utm=1#frag"),
            tf.node(id="doc", type="document-block", url="https://s3.example/k.docx?Sig=s"),
            tf.node(id="img", type="image-block", url="https://user:pw@cdn.example/i.png#x"),
        )
    ),
    "lone_surrogates": lambda: tf.make_run(
        dag='{"canvas_id":"c","nodes":[{"id":"a","content":"x\\ud800y","name":"\\udfff"}]}'
    ),
    "bad_utf8_dag": lambda: tf.make_run(
        dag=b'{"canvas_id":"c","canvas_name":"bad \xc3\x28 name","nodes":['
        b'{"id":"a","content":"ok \xe2\x82\xac then \xff\xfe end","url":null},'
        b'{"id":"b","content":"clean \xe2\x82\xac"}],"edges":[]}'
    ),
    "bad_utf8_run": lambda: tf.make_run(
        run=b'{"run_id":"r","status":"completed","result":{"final_output":"caf\xe9",'
        b'"artifacts":[{"id":"a","download_url":"https://s/x?sig=\xff"}]}}'
    ),
    "duplicate_keys": lambda: tf.make_run(
        dag='{"nodes":[{"id":"a","content":"first","content":"second"}]}'
    ),
    "odd_sources": lambda: tf.make_run(
        dag=tf.dag_with(
            tf.node(sources=[{"url": "https://a.example", "title": "A"}, "https://d.example/x"]),
            tf.node(id="b", sources=[None, "just a note", {"title": {"not": "a string"}}]),
            tf.node(id="c", sources="https://y.example"),
        )
    ),
    "hostile_names": lambda: tf.make_run(
        dag=tf.dag_with(*[tf.node(id=f"b{i}", name=n) for i, n in enumerate(tf.HOSTILE_NAMES)]),
        tasks={"completed": [{"task_id": n, "name": n} for n in tf.HOSTILE_NAMES]},
    ),
    "deep_tasks": lambda: tf.make_run(tasks=tf.deep_task_text(5_000)),
    "wrong_types": lambda: tf.make_run(
        run={"run_id": 7, "status": "completed", "errors": ["a bare message", {"error": "e"}]},
        dag={"canvas_id": 5, "canvas_name": ["x"], "nodes": {"id": "x"}, "edges": "nope"},
        tasks=[1, 2],
    ),
}


def _fuzz_cases() -> Iterator[tuple[str, Callable[[], FetchedRun]]]:
    rng = random.Random(7)
    found = 0
    while found < 40:
        docs = [json.dumps(tf.random_json(rng), indent=rng.choice([None, 2])) for _ in range(3)]
        if not any(mask_big_strings(d.encode(), 2) for d in docs):
            continue  # no string values at all: nothing for the big path to do
        yield f"fuzz{found}", lambda docs=docs: tf.make_run(run=docs[0], dag=docs[1], tasks=docs[2])
        found += 1


ALL_CASES = {**CASES, **dict(_fuzz_cases())}


def _parquet(tables: dict[str, pa.Table]) -> dict[str, bytes]:
    return {name: encode_table(name, table).data for name, table in tables.items()}


@pytest.mark.parametrize("case", sorted(ALL_CASES))
@pytest.mark.parametrize(("threshold", "chunk"), [(2, 16), (9, 17), (40, 1 << 16)])
def test_big_path_archives_exactly_what_the_small_path_archives(case, threshold, chunk):
    make = ALL_CASES[case]
    ordinary = make()
    small = flatten_run(ordinary, CTX)
    with big_path(threshold, chunk):
        fetched = make()
        big = flatten_run(fetched, CTX)
    pairs = zip(
        (ordinary.run, ordinary.dag, ordinary.tasks),
        (fetched.run, fetched.dag, fetched.tasks),
        strict=True,
    )
    docs = [(a, b) for a, b in pairs if a is not None and b is not None]
    for a, b in docs:  # every document with a long enough string value took the big path
        assert bool(b.bigs) == bool(mask_big_strings(a.original_bytes(), threshold))
    assert threshold > 2 or any(b.bigs for _, b in docs)
    for name in small:
        assert big[name].schema.equals(small[name].schema, check_metadata=True)
    assert rows(big) == rows(small)
    # The same Parquet files: the threshold only decided how the values were carried.
    small_files, big_files = _parquet(small), _parquet(big)
    for name in small_files:
        a = pq.read_table(io.BytesIO(small_files[name]))
        b = pq.read_table(io.BytesIO(big_files[name]))
        assert a.equals(b, check_metadata=True), name
    assert big_files == small_files


def test_rawdoc_equality_and_bytes_on_the_big_path():
    text = json.dumps(tf.FIXTURE_RUN)
    with big_path(10):
        a, b = RawDoc.parse(text), RawDoc.parse(text.encode())
    assert a.bigs and a == b and hash(a) == hash(b)
    assert a.original_bytes() == text.encode() and a.expanded_text() == text
    assert "big strings" in repr(a)


# ------------------------------------------------------------ one real big block and output


def _huge(n: int) -> str:
    head = "# Huge block \u2014 caf\u00e9 \u65e5\u672c\u8a9e \U0001f680\n\n"
    line = 'Line {:07d}: lorem ipsum "quoted" \\ back \t tab\n'
    return head + "".join(line.format(i) for i in range(n))


def test_huge_content_block_with_escapes_is_byte_exact_and_zero_copy():
    content = _huge(60_000)  # ~3 MB of text, escapes on every line, one emoji
    dag = tf.dag_with(tf.node(id="big", content=content), tf.node(id="small", content="s"))
    body = json.dumps({"success": True, "data": dag}, ensure_ascii=False).encode()
    response = unwrap(200, body, "r")
    assert response.bigs and response.utf8_valid
    fr = tf.make_run(dag=dag)
    fr = FetchedRun(
        fr.run_id, fr.run, fetch.raw_doc(response), fr.tasks, fr.artifacts, [], None, None, tf.T0
    )
    t = flatten_run(fr, CTX)
    blocks = t["blocks"]
    big = blocks.to_pylist()[0]
    assert big["content"] == content
    assert big["content_bytes"] == len(content.encode())
    assert big["content_sha256"] == hashlib.sha256(content.encode()).hexdigest()
    start = body.index(b'{"id": "big"')
    node_text = json.dumps(dag["nodes"][0], ensure_ascii=False)
    assert big["raw_json"] == node_text and big["raw_bytes"] is None
    # raw_json of the big row is the (spooled) body's own memory, not a copy
    (spooled,) = {id(b.source): b.source for _, b in fr.dag.bigs}.values()
    assert isinstance(spooled, mmap.mmap) and spooled[:] == body
    raw_json = blocks.column("raw_json").chunk(0)
    address = raw_json.buffers()[2].address
    body_address = pa.py_buffer(spooled).address
    assert body_address + start == address
    assert only_parquet_roundtrip(t)["blocks"] == blocks.to_pylist()


def only_parquet_roundtrip(tables: dict[str, pa.Table]) -> dict[str, list[dict[str, Any]]]:
    return {
        name: pq.read_table(io.BytesIO(encode_table(name, table).data)).to_pylist()
        for name, table in tables.items()
    }


def test_no_python_str_of_a_big_block_is_ever_made():
    # One emoji makes a str UCS-4: 4 bytes a character. The big path holds the body and the
    # decoded UTF-8 (~2x the text); one str of the content alone would be 4x.
    content = _huge(120_000)
    size = len(content.encode())
    body = json.dumps(
        {"success": True, "data": tf.dag_with(tf.node(id="big", content=content))},
        ensure_ascii=False,
    ).encode()
    del content
    tracemalloc.start()
    try:
        response = unwrap(200, body, None)
        fr = tf.make_run()
        fr = FetchedRun(fr.run_id, fr.run, fetch.raw_doc(response), None, [], [], None, None, tf.T0)
        tables = flatten_run(fr, CTX)
        for name, table in tables.items():
            encode_table(name, table)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.6 * size, f"peak {peak} for {size} bytes of content"


def test_huge_final_output_through_the_client_response():
    final = _huge(30_000) + "\ud83d"  # a lone high surrogate at the very end, as an escape
    run = dict(tf.FIXTURE_RUN, result={"final_output": final, "artifacts": []})
    body = json.dumps({"success": True, "data": run}).encode()  # ensure_ascii: all escapes
    with big_path(1 << 16, 1 << 12):
        response = unwrap(200, body, None)
        assert len(response.bigs) == 1
        view = fetch.lean_run(Run(response))
        # the archiver's view reads status, canvas and artifacts without the big text
        assert (view.status, view.canvas_id, view.artifacts) == ("completed", tf.CANVAS, [])
        assert isinstance(view.data["result"]["final_output"], BigString)
        assert response._full is None  # nothing materialised the full value
        fr = tf.make_run()
        fr = FetchedRun(
            fr.run_id, fetch.raw_doc(response), fr.dag, fr.tasks, [], [], None, None, tf.T0
        )
        r = flatten_run(fr, CTX)["runs"].to_pylist()[0]
    assert r["final_output"] == final[:-1] + "\ufffd"
    assert r["raw_json"] == json.dumps(run)
    # the typed view still gives the exact value (materialised on demand)
    assert Run(response).final_output == final
    assert response.data_text == json.dumps(run)


def test_lean_view_materialises_small_fields_that_happen_to_be_big():
    name = "n" * 100
    run = dict(
        tf.FIXTURE_RUN,
        result={
            "final_output": "f" * 100,
            "artifacts": [{"id": "a1", "type": "docx", "name": name, "download_url": "u" * 80}],
        },
    )
    body = json.dumps({"success": True, "data": run}).encode()
    with big_path(60):
        response = unwrap(200, body, None)
        view = fetch.lean_run(Run(response))
    (art,) = view.artifacts
    assert (art.name, art.download_url) == (name, "u" * 80)
    assert isinstance(view.data["result"]["final_output"], BigString)
    assert Run(response).final_output == "f" * 100


def test_big_error_message_is_cut_and_huge_bodies_are_not_decoded_for_errors():
    body = json.dumps({"success": False, "error": "E" * 10_000}).encode()
    with big_path(1_000), pytest.raises(SpineAPIError) as info:
        unwrap(404, body, None)
    assert info.value.error_message == "E" * 2000
