"""flatten_run / RawDoc: byte-exact content, redaction of signed URLs, hostile shapes."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pytest

from spine_pipeline.archive.arrow_schemas import TABLES
from spine_pipeline.archive.fetch import raw_doc
from spine_pipeline.archive.flatten import (
    flatten_batch,
    flatten_batch_by_dt,
    flatten_run,
    partition_dt,
    strip_url,
)
from spine_pipeline.archive.records import (
    ArtifactOutcome,
    BatchContext,
    FetchedRun,
    RawDoc,
    parse_json,
    split_envelope,
)
from spine_pipeline.spine.envelope import unwrap

CANVAS = "11111111-1111-4111-8111-111111111111"
NODE_A = "22222222-2222-4222-8222-222222222222"
NODE_B = "33333333-3333-4333-8333-333333333333"
RUN_ID = "550e8400-e29b-41d4-a716-446655440000"

# docs/spine-api.md section 8, verbatim (including its line breaks and indentation).
FIXTURE_DAG = """{"canvas_id":"11111111-1111-4111-8111-111111111111","canvas_name":"Q1 report",
 "nodes":[
  {"id":"22222222-2222-4222-8222-222222222222","name":"Market scan","type":"web-research-block",
   "status":"completed","content":"Findings...","url":null,
   "sources":[{"url":"https://example.com/a","title":"A"}]},
  {"id":"33333333-3333-4333-8333-333333333333","name":"Q1 Report","type":"document-block",
   "status":"completed","content":"# Q1...","url":"https://signed.example/q1.docx?sig=x","sources":[]}],
 "edges":[{"source_id":"22222222-2222-4222-8222-222222222222","target_id":"33333333-3333-4333-8333-333333333333"}]}"""

FIXTURE_TASKS = {
    "canvas_id": CANVAS,
    "completed": [
        {
            "task_id": "t-parent",
            "name": "Write the Q1 report",
            "task_type": "parent-task",
            "status": "completed",
            "children": [
                {
                    "task_id": "t-persona",
                    "name": "Analyst",
                    "task_type": "persona-task",
                    "status": "completed",
                    "children": [
                        {
                            "task_id": "t-tool-1",
                            "name": "search",
                            "task_type": "tool-call-task",
                            "status": "completed",
                            "children": None,
                        },
                        {
                            "task_id": "t-tool-2",
                            "name": "write",
                            "task_type": "tool-call-task",
                            "status": "completed",
                            "children": [],
                        },
                    ],
                }
            ],
        }
    ],
    "not_completed": [],
}

FIXTURE_RUN = {
    "run_id": RUN_ID,
    "status": "completed",
    "canvas_id": CANVAS,
    "duration_ms": 927300,
    "result": {
        "final_output": "# Q1 report\n\nAll good.\n",
        "artifacts": [
            {
                "id": NODE_B,
                "type": "docx",
                "name": "Q1_Report.docx",
                "download_url": "https://signed.example/q1.docx?X-Amz-Signature=abc",
                "size_bytes": 245000,
            }
        ],
    },
    "metadata": {
        "template_used": "report",
        "models_used": ["anthropic/claude-sonnet-4-6"],
        "credits_consumed": 45,
    },
    "prompt": "Write the Q1 report",
    "template": "report",
}

T0 = datetime(2026, 4, 21, 23, 59, 59, 123456, tzinfo=UTC)
CTX = BatchContext(batch_id="batch-0001", archived_at=datetime(2026, 4, 22, 1, 2, 3, tzinfo=UTC))


def doc(value: Any) -> RawDoc:
    """A RawDoc from a JSON text, bytes, or a value (serialised once, like a server would)."""
    if isinstance(value, str | bytes):
        return RawDoc.parse(value)
    return RawDoc.parse(json.dumps(value))


def outcome(artifact_id: str = NODE_B, **kw: Any) -> ArtifactOutcome:
    base: dict[str, Any] = {
        "artifact_id": artifact_id,
        "type": "docx",
        "name": "Q1_Report.docx",
        "reported_size_bytes": 245000,
        "size_bytes": 245000,
        "sha256": "ab" * 32,
        "storage_uri": "artifacts/sha256/ab/" + "ab" * 32,
        "content_type": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "downloaded_at": T0,
        "download_error": None,
        "raw": {"id": artifact_id, "type": "docx", "name": "Q1_Report.docx", "size_bytes": 245000},
    }
    base.update(kw)
    return ArtifactOutcome(**base)


def make_run(
    run: Any = None,
    dag: Any = FIXTURE_DAG,
    tasks: Any = FIXTURE_TASKS,
    *,
    run_id: str = RUN_ID,
    artifacts: list[ArtifactOutcome] | None = None,
    fetch_errors: list[str] | None = None,
    terminal_at: datetime = T0,
) -> FetchedRun:
    return FetchedRun(
        run_id=run_id,
        run=doc(FIXTURE_RUN if run is None else run),
        dag=None if dag is None else doc(dag),
        tasks=None if tasks is None else doc(tasks),
        artifacts=[outcome()] if artifacts is None else artifacts,
        fetch_errors=[] if fetch_errors is None else fetch_errors,
        request_name="q1-report",
        submitted_at=T0 - timedelta(minutes=15),
        terminal_at=terminal_at,
    )


def rows(tables: dict[str, pa.Table], name: str) -> list[dict[str, Any]]:
    return tables[name].to_pylist()


def only(tables: dict[str, pa.Table], name: str) -> dict[str, Any]:
    (row,) = rows(tables, name)
    return row


def node(**kw: Any) -> dict[str, Any]:
    base = {"id": NODE_A, "name": "n", "type": "prompt-block", "status": "completed"}
    base.update(kw)
    return base


def dag_with(*nodes: dict[str, Any], edges: list[Any] | None = None) -> dict[str, Any]:
    return {"canvas_id": CANVAS, "canvas_name": "c", "nodes": list(nodes), "edges": edges or []}


def without_key(value: Any, key: str) -> Any:
    """value with every object member named `key` removed (shallow trees only)."""
    if isinstance(value, dict):
        return {k: without_key(v, key) for k, v in value.items() if k != key}
    if isinstance(value, list):
        return [without_key(v, key) for v in value]
    return value


# ----------------------------------------------------------------------------- the fixture


def test_fixture_flattens_into_all_seven_tables_with_their_schemas():
    t = flatten_run(make_run(), CTX)
    assert list(t) == list(TABLES)
    for name, table in t.items():
        assert table.schema.equals(TABLES[name], check_metadata=True), name
    counts = {name: table.num_rows for name, table in t.items()}
    assert counts == {
        "runs": 1,
        "blocks": 2,
        "block_sources": 1,
        "edges": 1,
        "tasks": 4,
        "artifacts": 1,
        "run_errors": 0,
    }


def test_fixture_runs_row():
    r = only(flatten_run(make_run(), CTX), "runs")
    assert r["run_id"] == RUN_ID
    assert r["canvas_id"] == CANVAS
    assert r["canvas_name"] == "Q1 report"
    assert r["canvas_url"] == f"https://app.getspine.ai/canvas/{CANVAS}"
    assert r["status"] == "completed"
    assert (r["prompt"], r["template"], r["template_used"]) == ("Write the Q1 report",) + (
        "report",
    ) * 2
    assert r["models_used"] == ["anthropic/claude-sonnet-4-6"]
    assert r["credits_consumed"] == 45
    assert r["duration_ms"] == 927300
    assert r["final_output"] == "# Q1 report\n\nAll good.\n"
    assert (r["block_count"], r["edge_count"], r["task_count"]) == (2, 1, 4)
    assert (r["error_count"], r["artifact_count"]) == (0, 1)
    assert r["request_name"] == "q1-report"
    assert r["submitted_at"] == T0 - timedelta(minutes=15)
    assert r["terminal_at"] == T0
    assert (r["batch_id"], r["archived_at"]) == (CTX.batch_id, CTX.archived_at)
    assert r["fetch_errors"] == []
    assert r["raw_bytes"] is None
    assert json.loads(r["dag_raw_json"]) == {"canvas_id": CANVAS, "canvas_name": "Q1 report"}
    assert json.loads(r["tasks_raw_json"]) == {"canvas_id": CANVAS}


def test_fixture_blocks_edges_sources():
    t = flatten_run(make_run(), CTX)
    a, b = rows(t, "blocks")
    assert (a["ordinal"], a["block_id"], a["type"]) == (0, NODE_A, "web-research-block")
    assert a["content"] == "Findings..."
    assert a["content_sha256"] == hashlib.sha256(b"Findings...").hexdigest()
    assert a["content_bytes"] == len(b"Findings...")
    assert a["url"] is None and a["url_redacted"] is False
    assert a["sources_json"] == '[{"url":"https://example.com/a","title":"A"}]'
    assert a["sources_count"] == 1
    # the node's exact text, line breaks and indentation included
    start = FIXTURE_DAG.index('{"id":"2222')
    end = FIXTURE_DAG.index("]}", start) + 2
    assert a["raw_json"] == FIXTURE_DAG[start:end]
    assert (b["ordinal"], b["block_id"], b["sources_json"], b["sources_count"]) == (
        1,
        NODE_B,
        "[]",
        0,
    )
    assert all(r["canvas_id"] == CANVAS and r["run_id"] == RUN_ID for r in (a, b))
    s = only(t, "block_sources")
    assert (s["block_id"], s["block_ordinal"], s["idx"]) == (NODE_A, 0, 0)
    assert (s["url"], s["title"]) == ("https://example.com/a", "A")
    assert s["raw_json"] == '{"url":"https://example.com/a","title":"A"}'
    e = only(t, "edges")
    assert (e["source_id"], e["target_id"], e["ordinal"]) == (NODE_A, NODE_B, 0)
    assert json.loads(e["raw_json"]) == {"source_id": NODE_A, "target_id": NODE_B}


def test_fixture_task_tree_preorder():
    got = rows(flatten_run(make_run(), CTX), "tasks")
    assert [r["task_id"] for r in got] == ["t-parent", "t-persona", "t-tool-1", "t-tool-2"]
    assert [r["depth"] for r in got] == [0, 1, 2, 2]
    assert [r["parent_task_id"] for r in got] == [None, "t-parent", "t-persona", "t-persona"]
    assert [r["parent_ordinal"] for r in got] == [None, 0, 1, 1]
    assert {r["root_task_id"] for r in got} == {"t-parent"}
    assert [r["child_count"] for r in got] == [1, 2, 0, 0]
    assert [r["task_type"] for r in got] == [
        "parent-task",
        "persona-task",
        "tool-call-task",
        "tool-call-task",
    ]
    assert {r["subtree"] for r in got} == {"completed"}
    for r in got:
        assert "children" not in json.loads(r["raw_json"]) or r["task_id"] == "t-tool-1"
    # children: null is kept as received (it was not flattened into rows)
    assert json.loads(got[2]["raw_json"])["children"] is None


def test_artifacts_rows():
    raw = {"id": NODE_B, "type": "docx", "name": "../../etc/passwd", "extra": {"k": [1, 2]}}
    raw_with_url = dict(raw, download_url="https://signed.example/x?sig=secret")
    arts = [
        outcome(name="../../etc/passwd", raw=raw_with_url),
        outcome(
            artifact_id="a2",
            size_bytes=None,
            sha256=None,
            storage_uri=None,
            downloaded_at=None,
            download_error="HTTP 403: url expired",
            raw={"id": "a2"},
        ),
    ]
    assert "download_url" not in arts[0].raw  # dropped by the record itself
    t = flatten_run(make_run(artifacts=arts), CTX)
    a, b = rows(t, "artifacts")
    assert a["name"] == "../../etc/passwd"
    assert json.loads(a["raw_json"]) == raw
    assert "sig=secret" not in a["raw_json"]
    assert a["downloaded_at"] == T0 and a["ordinal"] == 0
    assert (b["artifact_id"], b["download_error"], b["size_bytes"]) == (
        "a2",
        "HTTP 403: url expired",
        None,
    )
    assert only(t, "runs")["artifact_count"] == 2


# ------------------------------------------------------------------------- byte-exactness

EXACT = [
    "  leading and trailing whitespace  \n\n",
    "windows\r\nline\r\nendings\r\n",
    "nul\x00inside\x00",
    "emoji 😀 and flags 🇫🇷",
    "non-BMP \U0001d518\U0001d52b\U0001d526 \U0002070e",
    "\u202eright-to-left override\u202c ‮",
    "\t tabs \u00a0nbsp \u2028 line sep \ufeff bom",
    "",
    "combining e\u0301 vs \u00e9 (not normalised)",
]


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_content_and_final_output_are_byte_exact(ensure_ascii):
    nodes = [node(id=f"n{i}", content=c) for i, c in enumerate(EXACT)]
    run = dict(FIXTURE_RUN, result={"final_output": "".join(EXACT), "artifacts": []})
    fr = make_run(
        run=json.dumps(run, ensure_ascii=ensure_ascii),
        dag=json.dumps(dag_with(*nodes), ensure_ascii=ensure_ascii),
    )
    t = flatten_run(fr, CTX)
    got = rows(t, "blocks")
    assert [r["content"] for r in got] == EXACT
    for r, c in zip(got, EXACT, strict=True):
        assert r["content_sha256"] == hashlib.sha256(c.encode("utf-8")).hexdigest()
        assert r["content_bytes"] == len(c.encode("utf-8"))
        assert json.loads(r["raw_json"])["content"] == c
    assert only(t, "runs")["final_output"] == "".join(EXACT)


def test_null_and_non_string_content():
    t = flatten_run(make_run(dag=dag_with(node(content=None), node(id="b", content={"x": 1}))), CTX)
    a, b = rows(t, "blocks")
    assert a["content"] is a["content_sha256"] is a["content_bytes"] is None
    assert b["content"] is None and json.loads(b["raw_json"])["content"] == {"x": 1}


def test_lone_surrogate_escape_is_replaced_in_columns_but_exact_in_raw_json():
    text = '{"canvas_id":"c","nodes":[{"id":"a","content":"x\\ud800y","name":"\\udfff"}]}'
    b = only(flatten_run(make_run(dag=text), CTX), "blocks")
    assert b["content"] == "x\ufffdy" and b["name"] == "\ufffd"
    assert b["content_sha256"] == hashlib.sha256("x\ufffdy".encode()).hexdigest()
    assert b["raw_json"] == '{"id":"a","content":"x\\ud800y","name":"\\udfff"}'


def test_unknown_fields_survive_in_raw_json():
    run = dict(FIXTURE_RUN, future={"nested": [1, 2.50, None]}, errors=[{"error": "e", "z": 1}])
    dag = dag_with(
        node(x_extra={"deep": ["v"]}, sources=[{"url": "u", "snippet": "s", "score": 0.5}]),
        edges=[{"source_id": "a", "target_id": "b", "label": "derived"}],
    )
    dag["layout"] = {"zoom": 2}
    tasks = {"canvas_id": "c", "completed": [{"task_id": "t", "cost": 3}], "owner": "x"}
    t = flatten_run(make_run(run=run, dag=dag, tasks=tasks), CTX)
    r = only(t, "runs")
    assert json.loads(r["raw_json"])["future"] == {"nested": [1, 2.5, None]}
    assert '"nested": [1, 2.5, null]' in r["raw_json"]  # spelling of the text kept
    assert json.loads(r["dag_raw_json"])["layout"] == {"zoom": 2}
    assert json.loads(r["tasks_raw_json"])["owner"] == "x"
    assert json.loads(only(t, "blocks")["raw_json"])["x_extra"] == {"deep": ["v"]}
    assert json.loads(only(t, "block_sources")["raw_json"])["snippet"] == "s"
    assert json.loads(only(t, "edges")["raw_json"])["label"] == "derived"
    assert json.loads(only(t, "tasks")["raw_json"])["cost"] == 3
    assert json.loads(only(t, "run_errors")["raw_json"])["z"] == 1


def test_unknown_statuses_are_kept_as_received():
    run = dict(FIXTURE_RUN, status="cancelled_by_operator")
    dag = dag_with(node(status="QUEUED-ish"))
    tasks = {"completed": [], "not_completed": [{"task_id": "t", "status": "paused ⏸"}]}
    t = flatten_run(make_run(run=run, dag=dag, tasks=tasks), CTX)
    assert only(t, "runs")["status"] == "cancelled_by_operator"
    assert only(t, "blocks")["status"] == "QUEUED-ish"
    task = only(t, "tasks")
    assert (task["status"], task["subtree"]) == ("paused ⏸", "not_completed")


def test_duplicate_keys_raw_json_keeps_both_and_columns_take_the_last():
    text = '{"nodes":[{"id":"a","content":"first","content":"second"}]}'
    b = only(flatten_run(make_run(dag=text), CTX), "blocks")
    assert b["content"] == "second"
    assert b["raw_json"] == '{"id":"a","content":"first","content":"second"}'


# ---------------------------------------------------------------- signed URLs not archived

RUN_WITH_URLS = """ {
  "run_id": "r", "status": "partial",
  "result": {"final_output": "x", "artifacts": [
    {"download_url": "https://s.example/1?X-Amz-Signature=aaa", "id": "a1", "name": "one.docx"},
    {"id": "a2", "download_url" : "https://s.example/2?sig=bbb" , "type": "png"},
    {"id": "a3", "name": "three", "download_url":"https://s.example/3?sig=ccc"},
    {"download_url": "https://s.example/4?sig=ddd"},
    {"id": "a5", "download_url": "https://s.example/5?sig=eee", "download_url": "dup?sig=fff"}
  ]},
  "artifacts": [{"id": "top", "download_url": "https://s.example/6?sig=ggg"}],
  "errors": [{"error": "one block failed", "block_id": "b", "recoverable": true}]
} """


def test_download_url_removed_from_raw_json_and_nothing_else_changed():
    r = only(flatten_run(make_run(run=RUN_WITH_URLS), CTX), "runs")
    assert "download_url" not in r["raw_json"]
    assert "sig=" not in r["raw_json"] and "Signature" not in r["raw_json"]
    assert json.loads(r["raw_json"]) == without_key(json.loads(RUN_WITH_URLS), "download_url")
    # text outside the removed members is untouched, surrounding whitespace included
    assert r["raw_json"].startswith(' {\n  "run_id": "r", "status": "partial",')
    assert r["raw_json"].endswith('"recoverable": true}]\n} ')
    assert '{"id": "a2" , "type": "png"}' in r["raw_json"]  # separator after it kept
    assert '{"id": "a3", "name": "three"}' in r["raw_json"]
    assert '{"id": "a1", "name": "one.docx"}' in r["raw_json"]
    assert "{}" in r["raw_json"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"download_url":"u"}', "{}"),
        ('{ "download_url" : "u" }', "{  }"),
        ('{"a":1,"download_url":"u"}', '{"a":1}'),
        ('{"download_url":"u","a":1}', '{"a":1}'),
        ('{"a":1, "download_url":"u", "b":2}', '{"a":1, "b":2}'),
        ('{"download_url":"u","download_url":"v","a":1}', '{"a":1}'),
        ('{"a":1,"download_url":"u","download_url":"v"}', '{"a":1}'),
        (
            '{"a":{"download_url":{"download_url":"x"}},"b":[{"download_url":1}]}',
            '{"a":{},"b":[{}]}',
        ),
    ],
)
def test_member_removal_keeps_valid_json(text, expected):
    r = only(flatten_run(make_run(run=text), CTX), "runs")
    assert r["raw_json"] == expected
    json.loads(r["raw_json"])


def test_block_url_rules():
    dag = dag_with(
        node(id="web", type="web-block", url="https://news.example/a?utm=1#frag"),
        node(id="yt", type="yt-block", url="https://youtube.com/watch?v=abc"),
        node(id="doc", type="document-block", url="https://s3.example/k.docx?X-Amz-Signature=s"),
        node(id="img", type="image-block", url="https://user:pw@cdn.example/i.png#x"),
        node(id="plain", type="excel-block", url="https://cdn.example/plain.xlsx"),
        node(id=NODE_B, type="web-block", url="https://s.example/artifact?sig=1"),
        node(id="num", type="document-block", url=42),
        node(id="unknown", type="future-block", url="https://x.example/?token=t"),
    )
    got = {r["block_id"]: r for r in rows(flatten_run(make_run(dag=dag), CTX), "blocks")}
    assert got["web"]["url"] == "https://news.example/a?utm=1#frag"
    assert got["yt"]["url"] == "https://youtube.com/watch?v=abc"
    assert "url" in json.loads(got["web"]["raw_json"])
    assert got["doc"]["url"] == "https://s3.example/k.docx"
    assert got["img"]["url"] == "https://cdn.example/i.png"
    assert got["plain"]["url"] == "https://cdn.example/plain.xlsx"
    assert got[NODE_B]["url"] == "https://s.example/artifact"  # an artifact's node: signed
    assert got["unknown"]["url"] == "https://x.example/"
    assert got["num"]["url"] is None and json.loads(got["num"]["raw_json"])["url"] == 42
    for bid in ("doc", "img", NODE_B, "unknown"):
        assert got[bid]["url_redacted"] is True
        assert "url" not in json.loads(got[bid]["raw_json"])
    assert got["plain"]["url_redacted"] is False
    assert not any(got[k]["url_redacted"] for k in ("web", "yt", "num"))


def test_fixture_signed_node_url_is_not_archived_anywhere():
    t = flatten_run(make_run(), CTX)
    for name, table in t.items():
        for row in table.to_pylist():
            for value in row.values():
                if isinstance(value, str | bytes):
                    text = value if isinstance(value, str) else value.decode("utf-8", "replace")
                    assert "sig=x" not in text, name
                    assert "X-Amz-Signature" not in text, name


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://a.example/p?q=1", "https://a.example/p"),
        ("https://a.example/p#f?x", "https://a.example/p"),
        ("https://u:p@a.example:8443/p/q", "https://a.example:8443/p/q"),
        ("https://a.example/path@with-at", "https://a.example/path@with-at"),
        ("not a url ?x", "not a url "),
        ("", ""),
        ("http://[::1", "http://[::1"),
    ],
)
def test_strip_url(url, expected):
    assert strip_url(url) == expected


# ------------------------------------------------------------------------------- sources


def test_odd_sources_elements():
    sources = [
        {"url": "https://a.example", "title": "A"},
        {"link": "https://b.example", "name": "B"},
        {"href": 5, "uri": "https://c.example"},
        "https://d.example/x",
        "www.e.example",
        "just a note",
        None,
        [["nested"], {"url": "https://in.nested"}],
        {"title": {"not": "a string"}},
        7,
        True,
    ]
    t = flatten_run(make_run(dag=dag_with(node(sources=sources))), CTX)
    got = rows(t, "block_sources")
    assert [r["idx"] for r in got] == list(range(len(sources)))
    assert [(r["url"], r["title"]) for r in got] == [
        ("https://a.example", "A"),
        ("https://b.example", "B"),
        ("https://c.example", None),
        ("https://d.example/x", None),
        ("www.e.example", None),
        (None, None),
        (None, None),
        (None, None),
        (None, None),
        (None, None),
        (None, None),
    ]
    assert got[6]["raw_json"] == "null"
    assert json.loads(got[7]["raw_json"]) == sources[7]
    assert [json.loads(r["raw_json"]) for r in got] == sources
    b = only(t, "blocks")
    assert b["sources_count"] == len(sources)
    assert json.loads(b["sources_json"]) == sources


@pytest.mark.parametrize(
    ("sources", "count", "n_rows"),
    [({"url": "https://x.example"}, 1, 1), ("https://y.example", 1, 1), (None, 0, 0), (3, 1, 1)],
)
def test_non_list_sources_do_not_crash(sources, count, n_rows):
    t = flatten_run(make_run(dag=dag_with(node(sources=sources))), CTX)
    b = only(t, "blocks")
    assert b["sources_count"] == count
    assert json.loads(b["sources_json"]) == sources
    got = rows(t, "block_sources")
    assert len(got) == n_rows
    if n_rows:
        assert got[0]["idx"] == 0 and json.loads(got[0]["raw_json"]) == sources


def test_absent_sources():
    n = node()
    b = only(flatten_run(make_run(dag=dag_with(n)), CTX), "blocks")
    assert (b["sources_json"], b["sources_count"]) == (None, 0)


def test_ten_thousand_sources():
    sources = [{"url": f"https://e.example/{i}", "title": f"t{i}"} for i in range(10_000)]
    t = flatten_run(make_run(dag=dag_with(node(sources=sources))), CTX)
    got = t["block_sources"]
    assert got.num_rows == 10_000
    assert got.column("idx").to_pylist() == list(range(10_000))
    assert got.column("url")[9_999].as_py() == "https://e.example/9999"
    assert only(t, "blocks")["sources_count"] == 10_000


# --------------------------------------------------------------------------------- tasks


def deep_task_text(depth: int) -> str:
    """A task chain `depth` levels deep, built as text (json.dumps would recurse)."""
    head = "".join(
        f'{{"task_id":"t{i}","name":"level {i}","task_type":"tool-call-task",'
        f'"status":"completed","children":['
        for i in range(depth)
    )
    return '{"canvas_id":"c","completed":[' + head + "]}" * depth + '],"not_completed":[]}'


def test_rawdoc_parses_a_10000_deep_tree():
    text = deep_task_text(10_000)
    with pytest.raises(RecursionError):
        json.loads(text)
    d = RawDoc.parse(text)
    assert d.text == text
    assert d.value["completed"][0]["task_id"] == "t0"


def test_deep_task_tree_10000_levels():
    fr = make_run(tasks=deep_task_text(10_000))
    started = time.perf_counter()
    t = flatten_run(fr, CTX)
    elapsed = time.perf_counter() - started
    tasks = t["tasks"]
    assert tasks.num_rows == 10_000
    assert tasks.column("depth").to_pylist() == list(range(10_000))
    assert tasks.column("ordinal").to_pylist() == list(range(10_000))
    assert tasks.column("parent_task_id").to_pylist() == [None] + [f"t{i}" for i in range(9_999)]
    assert set(tasks.column("root_task_id").to_pylist()) == {"t0"}
    deepest = tasks.slice(9_999).to_pylist()[0]
    assert deepest["child_count"] == 0
    assert json.loads(tasks.column("raw_json")[5_000].as_py()) == {
        "task_id": "t5000",
        "name": "level 5000",
        "task_type": "tool-call-task",
        "status": "completed",
    }
    assert max(len(s) for s in tasks.column("raw_json").to_pylist()) < 200
    assert elapsed < 10


def test_task_children_null_absent_empty_and_odd():
    tasks = {
        "completed": [
            {"task_id": "a", "children": None},
            {"task_id": "b"},
            {"task_id": "c", "children": []},
            {"task_id": "d", "children": {"task_id": "not-a-list"}},
            "a bare string",
            {"task_id": "e", "children": [None, 5, {"task_id": "e1"}]},
        ],
        "not_completed": [{"task_id": "f", "status": "error", "children": [{"task_id": "f1"}]}],
    }
    got = rows(flatten_run(make_run(tasks=tasks), CTX), "tasks")
    ids = [r["task_id"] for r in got]
    assert ids == ["a", "b", "c", "d", None, "e", None, None, "e1", "f", "f1"]
    assert [r["subtree"] for r in got] == ["completed"] * 9 + ["not_completed"] * 2
    assert [r["depth"] for r in got] == [0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 1]
    by = dict(zip(range(len(got)), got, strict=True))
    assert json.loads(by[0]["raw_json"]) == {"task_id": "a", "children": None}
    assert json.loads(by[2]["raw_json"]) == {"task_id": "c"}
    assert json.loads(by[3]["raw_json"])["children"] == {"task_id": "not-a-list"}
    assert by[4]["raw_json"] == '"a bare string"'
    assert (by[6]["raw_json"], by[7]["raw_json"]) == ("null", "5")
    assert by[8]["parent_task_id"] == "e" and by[8]["root_task_id"] == "e"
    assert by[10]["parent_ordinal"] == 9 and by[10]["root_ordinal"] == 9


def test_task_lists_of_the_wrong_type_stay_in_tasks_raw_json():
    tasks = {"canvas_id": "c", "completed": {"task_id": "x"}, "not_completed": None}
    t = flatten_run(make_run(tasks=tasks), CTX)
    assert t["tasks"].num_rows == 0
    assert json.loads(only(t, "runs")["tasks_raw_json"]) == tasks


# --------------------------------------------------------------------- missing / wrong types


def test_missing_dag_and_tasks_give_empty_tables_with_the_schema():
    fr = make_run(dag=None, tasks=None, artifacts=[], fetch_errors=["dag: canvas not found"])
    t = flatten_run(fr, CTX)
    for name in ("blocks", "block_sources", "edges", "tasks", "artifacts", "run_errors"):
        assert t[name].num_rows == 0
        assert t[name].schema.equals(TABLES[name], check_metadata=True)
    r = only(t, "runs")
    assert r["fetch_errors"] == ["dag: canvas not found"]
    assert r["dag_raw_json"] is None and r["tasks_raw_json"] is None
    assert (r["block_count"], r["task_count"], r["canvas_name"]) == (0, 0, None)


def test_failed_run_without_canvas():
    run = {"run_id": RUN_ID, "status": "failed", "errors": [{"error": "Agent execution failed"}]}
    t = flatten_run(make_run(run=run, dag=None, tasks=None, artifacts=[]), CTX)
    r = only(t, "runs")
    assert r["canvas_id"] is None and r["canvas_url"] is None
    assert r["final_output"] is None and r["credits_consumed"] is None
    assert r["error_count"] == 1
    assert only(t, "run_errors")["error"] == "Agent execution failed"


def test_canvas_id_falls_back_to_the_dag():
    run = {k: v for k, v in FIXTURE_RUN.items() if k != "canvas_id"}
    t = flatten_run(make_run(run=run), CTX)
    assert only(t, "runs")["canvas_id"] == CANVAS
    assert {r["canvas_id"] for r in rows(t, "blocks")} == {CANVAS}


def test_hostile_canvas_id_gives_a_quoted_canvas_url():
    run = dict(FIXTURE_RUN, canvas_id="../../x?y")
    r = only(flatten_run(make_run(run=run), CTX), "runs")
    assert r["canvas_id"] == "../../x?y"
    assert r["canvas_url"] == "https://app.getspine.ai/canvas/..%2F..%2Fx%3Fy"


def test_wrong_types_do_not_crash_and_keep_the_raw():
    run = {
        "run_id": 7,
        "status": 3,
        "duration_ms": "927300",
        "prompt": ["p"],
        "metadata": {
            "credits_consumed": "45",
            "models_used": "anthropic/claude",
            "template_used": 5,
        },
        "result": "not an object",
        "errors": {"error": "single error object", "recoverable": "yes"},
        "blocks": "not-a-list",
    }
    dag = {"canvas_id": 5, "canvas_name": ["x"], "nodes": {"id": "x"}, "edges": "nope"}
    t = flatten_run(make_run(run=run, dag=dag, tasks=[1, 2]), CTX)
    r = only(t, "runs")
    assert r["status"] is r["duration_ms"] is r["prompt"] is None
    assert r["credits_consumed"] is r["models_used"] is r["template_used"] is None
    assert r["final_output"] is None and r["canvas_name"] is None and r["canvas_id"] is None
    assert json.loads(r["raw_json"]) == run
    assert r["blocks_json"] == '"not-a-list"'
    assert json.loads(r["dag_raw_json"]) == dag
    assert json.loads(r["tasks_raw_json"]) == [1, 2]
    assert t["blocks"].num_rows == t["edges"].num_rows == t["tasks"].num_rows == 0
    e = only(t, "run_errors")
    assert (e["idx"], e["error"], e["recoverable"]) == (0, "single error object", None)


@pytest.mark.parametrize(
    ("credits", "expected"),
    [(45, 45), (0, 0), ("45", None), (45.0, None), (True, None), (2**63, None), (-1, -1)],
)
def test_credits_are_integers_only(credits, expected):
    run = dict(FIXTURE_RUN, metadata={"credits_consumed": credits, "models_used": ["a", 5]})
    r = only(flatten_run(make_run(run=run), CTX), "runs")
    assert r["credits_consumed"] == expected
    assert r["models_used"] == ["a", None]


def test_run_errors_shapes():
    run = dict(
        FIXTURE_RUN,
        status="partial",
        errors=[
            {
                "error": "block failed",
                "block_id": "b1",
                "block_type": "table-block",
                "recoverable": False,
            },
            "a bare message",
            None,
            {"error": 5, "recoverable": 1},
        ],
    )
    got = rows(flatten_run(make_run(run=run), CTX), "run_errors")
    assert [r["idx"] for r in got] == [0, 1, 2, 3]
    assert (got[0]["block_id"], got[0]["block_type"], got[0]["recoverable"]) == (
        "b1",
        "table-block",
        False,
    )
    assert [r["error"] for r in got] == ["block failed", "a bare message", None, None]
    assert got[2]["raw_json"] == "null" and got[3]["recoverable"] is None


def test_dag_nodes_and_edges_of_odd_shapes():
    dag = dag_with(node(), "a string node", None, edges=[{"source_id": "a"}, 5, {"target_id": 3}])
    t = flatten_run(make_run(dag=dag), CTX)
    blocks = rows(t, "blocks")
    assert [b["ordinal"] for b in blocks] == [0, 1, 2]
    assert blocks[1]["raw_json"] == '"a string node"' and blocks[1]["block_id"] is None
    assert blocks[2]["raw_json"] == "null"
    edges = rows(t, "edges")
    expected = [("a", None), (None, None), (None, None)]
    assert [(e["source_id"], e["target_id"]) for e in edges] == expected
    assert [e["raw_json"] for e in edges][1:] == ["5", '{"target_id": 3}']


def test_duplicate_block_ids_keep_both_rows():
    dag = dag_with(
        node(id="dup", content="first", sources=["https://one.example"]),
        node(id="dup", content="second", sources=["https://two.example"]),
    )
    t = flatten_run(make_run(dag=dag), CTX)
    got = rows(t, "blocks")
    assert [(b["block_id"], b["ordinal"], b["content"]) for b in got] == [
        ("dup", 0, "first"),
        ("dup", 1, "second"),
    ]
    src = rows(t, "block_sources")
    assert [(s["block_id"], s["block_ordinal"], s["url"]) for s in src] == [
        ("dup", 0, "https://one.example"),
        ("dup", 1, "https://two.example"),
    ]


HOSTILE_NAMES = [
    "../../x",
    "..\\..\\windows",
    "/etc/passwd",
    "nul\x00byte",
    "n" * 5_000,
    "\u202egnp.exe",
    "😀🔥 name",
    "",
    " spaced ",
    "line\nbreak",
]


def test_hostile_names_are_plain_data():
    nodes = [node(id=f"b{i}", name=n) for i, n in enumerate(HOSTILE_NAMES)]
    tasks = {"completed": [{"task_id": n, "name": n} for n in HOSTILE_NAMES]}
    arts = [outcome(artifact_id=f"a{i}", name=n) for i, n in enumerate(HOSTILE_NAMES)]
    run = dict(FIXTURE_RUN, prompt="\x00".join(HOSTILE_NAMES))
    t = flatten_run(make_run(run=run, dag=dag_with(*nodes), tasks=tasks, artifacts=arts), CTX)
    assert t["blocks"].column("name").to_pylist() == HOSTILE_NAMES
    assert t["tasks"].column("name").to_pylist() == HOSTILE_NAMES
    assert t["tasks"].column("task_id").to_pylist() == HOSTILE_NAMES
    assert t["artifacts"].column("name").to_pylist() == HOSTILE_NAMES
    assert only(t, "runs")["prompt"] == "\x00".join(HOSTILE_NAMES)


# -------------------------------------------------------------------------- invalid UTF-8


def test_invalid_utf8_is_replaced_in_columns_and_exact_in_raw_bytes():
    dag_bytes = (
        b'{"canvas_id":"c","canvas_name":"bad \xc3\x28 name","nodes":['
        b'{"id":"a","content":"ok \xe2\x82\xac then \xff\xfe end","url":null},'
        b'{"id":"b","content":"clean \xe2\x82\xac"}],"edges":[]}'
    )
    fr = make_run(dag=dag_bytes)
    assert fr.dag is not None and fr.dag.lossy
    assert fr.dag.original_bytes() == dag_bytes
    t = flatten_run(fr, CTX)
    a, b = rows(t, "blocks")
    assert a["content"] == "ok € then \ufffd\ufffd end"
    assert a["content_sha256"] == hashlib.sha256(a["content"].encode()).hexdigest()
    assert a["raw_bytes"] == b'{"id":"a","content":"ok \xe2\x82\xac then \xff\xfe end","url":null}'
    assert a["raw_json"] == a["raw_bytes"].decode("utf-8", "replace")
    assert b["raw_bytes"] is None  # this node's bytes were valid
    r = only(t, "runs")
    assert r["canvas_name"] == "bad \ufffd( name"
    assert r["dag_raw_bytes"] == b'{"canvas_id":"c","canvas_name":"bad \xc3\x28 name"}'
    assert r["raw_bytes"] is None


def test_invalid_utf8_in_the_run_doc_keeps_redaction_in_raw_bytes():
    body = (
        b'{"run_id":"r","status":"completed","result":{"final_output":"caf\xe9",'
        b'"artifacts":[{"id":"a","download_url":"https://s/x?sig=\xff"}]}}'
    )
    r = only(flatten_run(make_run(run=body), CTX), "runs")
    assert r["final_output"] == "caf\ufffd"
    assert r["raw_bytes"] == (
        b'{"run_id":"r","status":"completed","result":{"final_output":"caf\xe9",'
        b'"artifacts":[{"id":"a"}]}}'
    )
    assert "download_url" not in r["raw_json"]


def test_rawdoc_from_envelope_slices_exact_bytes():
    body = b' {"success": true, "data": {"content": "x\xffy", "n": 1.0}, "error": null} '
    meta, d = split_envelope(body)
    assert meta == {"success": True, "error": None}
    assert d is not None
    assert d.raw_bytes == b'{"content": "x\xffy", "n": 1.0}'
    assert d.text == '{"content": "x\ufffdy", "n": 1.0}'
    assert d.value == {"content": "x\ufffdy", "n": 1.0}
    assert RawDoc.from_envelope(body) == d
    clean = RawDoc.from_envelope('{"data": [1, 2],"success":true}')
    assert (clean.text, clean.raw_bytes) == ("[1, 2]", None)
    with pytest.raises(ValueError):
        RawDoc.from_envelope(b'{"success": true}')
    with pytest.raises(ValueError):
        RawDoc.from_envelope(b"[1]")


def test_the_archive_takes_the_client_parse_of_the_envelope():
    body = b' {"success": true, "data": {"content": "x\xffy\xe2\x82", "n": 1.0}, "error": null} '
    d = raw_doc(unwrap(200, body, None))
    assert d == RawDoc.from_envelope(body)
    assert d.raw_bytes == b'{"content": "x\xffy\xe2\x82", "n": 1.0}'
    assert d.value == {"content": "x\ufffdy\ufffd\ufffd", "n": 1.0}


def test_rawdoc_from_envelope_with_a_deep_data_value():
    deep = "[" * 5_000 + "]" * 5_000
    d = RawDoc.from_envelope('{"success":true,"data":' + deep + "}")
    assert d.text == deep


# ------------------------------------------------------------------------- RawDoc / parser


def test_rawdoc_parse_str_bytes_and_equality():
    a = RawDoc.parse('{"a": 1}')
    b = RawDoc.parse(b'{"a": 1}')
    assert a == b and hash(a) == hash(b) and a.raw_bytes is None
    assert a.value == {"a": 1}
    assert RawDoc.parse("[1]") != a
    assert "chars" in repr(RawDoc.parse("x" * 0 + '"' + "y" * 100 + '"'))
    with pytest.raises(ValueError):
        RawDoc.parse("{bad json")
    with pytest.raises(ValueError):
        RawDoc.parse(b"")


def test_rawdoc_from_surrogateescaped_text():
    d = RawDoc.parse(b'"a\xffb"'.decode("utf-8", "surrogateescape"))
    assert d.text == '"a\ufffdb"' and d.raw_bytes == b'"a\xffb"'


def test_records_are_hashable_and_comparable():
    fr = make_run()
    assert fr == make_run() and hash(fr) == hash(make_run())
    assert outcome() == outcome() and hash(outcome()) == hash(outcome())
    assert hash(CTX) == hash(BatchContext(CTX.batch_id, CTX.archived_at))


PARSER_CASES = [
    "{}",
    "[]",
    ' { "a" : [ 1 , -2.5e-3 , true , false , null ] , "b" : { } } ',
    '{"a":1,"a":2}',
    '"\\ud83d\\ude00 \\u00e9 \\n"',
    "[NaN, Infinity, -Infinity, 1E400, -0, 0.0]",
    "123456789012345678901234567890",
    '[{"a":[{"b":[[[]]]}]}]',
]


@pytest.mark.parametrize("text", PARSER_CASES)
def test_parse_json_matches_json_loads(text):
    value, span = parse_json(text)
    assert repr(value) == repr(json.loads(text))
    assert text[span.start : span.end] == text.strip()


@pytest.mark.parametrize(
    "text", ["", "{", "[1,]", '{"a":1,}', "01", "[1 2]", '{"a" 1}', "tru", "[1}", '"\x01"', "1 2"]
)
def test_parse_json_rejects_what_json_loads_rejects(text):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        parse_json(text)


def test_invalid_json_doc_is_archived_verbatim_and_reported():
    bad_dag = RawDoc(text='{"nodes": [{"url": "https://s/x?sig=1"', value=None)
    bad_run = RawDoc(
        text='{"status": "completed", "download_url": "https://s/y?sig=2", ', value=None
    )
    fr = FetchedRun(RUN_ID, bad_run, bad_dag, None, [], ["tasks: canvas not found"], None, None, T0)
    t = flatten_run(fr, CTX)
    r = only(t, "runs")
    assert r["fetch_errors"][0] == "tasks: canvas not found"
    assert any(e.startswith("run: invalid JSON") for e in r["fetch_errors"])
    assert any(e.startswith("dag: invalid JSON") for e in r["fetch_errors"])
    assert r["dag_raw_json"] == '{"nodes": [{"url": "https://s/x"'
    assert r["raw_json"] == '{"status": "completed", "download_url": null, '
    assert r["status"] is None and t["blocks"].num_rows == 0


def test_verbatim_body_is_archived_as_text_and_nothing_is_derived():
    # A body that was not the envelope (fetch.verbatim_doc): even when it happens to be JSON
    # shaped like a DAG, it is not data, so no rows come from it.
    body = b'{"nodes": [{"id": "a", "url": "https://s/x?sig=1", "content": "caf\xe9"}]}'
    error = "dag: Malformed response: expected a JSON object (HTTP 200); body archived verbatim"
    fr = make_run(fetch_errors=[error])
    fr = FetchedRun(
        RUN_ID, fr.run, RawDoc.verbatim_body(body), fr.tasks, [], [error], None, None, T0
    )
    t = flatten_run(fr, CTX)
    r = only(t, "runs")
    assert r["fetch_errors"] == [error]
    assert (
        r["dag_raw_json"]
        == '{"nodes": [{"id": "a", "url": "https://s/x", "content": "caf\ufffd"}]}'
    )
    assert (
        r["dag_raw_bytes"]
        == b'{"nodes": [{"id": "a", "url": "https://s/x", "content": "caf\xe9"}]}'
    )
    assert t["blocks"].num_rows == 0 and r["block_count"] == 0
    assert t["tasks"].num_rows == 4  # the task tree was fine


def test_verbatim_body_masks_echoed_keys():
    from spine_pipeline.archive.fetch import verbatim_doc

    body = b"<html>502 from proxy; request had X-API-KEY: sk_spine_live_abc123 \xff</html>"
    d = verbatim_doc(body)
    assert d.verbatim and "sk_spine_live_abc123" not in d.text and "***" in d.text
    assert d.raw_bytes == body.replace(b"sk_spine_live_abc123", b"***")
    assert verbatim_doc(b"plain").raw_bytes is None


# ----------------------------------------------------------------------------- size / scale


def test_20mb_content_in_one_block():
    big = ("lorem ipsum é😀 \r\n" * 1_200_000)[:20_000_000]
    fr = make_run(dag=dag_with(node(content=big)))
    started = time.perf_counter()
    b = only(flatten_run(fr, CTX), "blocks")
    assert time.perf_counter() - started < 10
    assert b["content"] == big
    assert b["content_sha256"] == hashlib.sha256(big.encode()).hexdigest()
    assert b["content_bytes"] == len(big.encode())


def test_20000_blocks_in_one_canvas():
    nodes = [
        node(id=f"b{i}", name=f"block {i}", content=f"content {i}", sources=[f"https://e.x/{i}"])
        for i in range(20_000)
    ]
    edges = [{"source_id": f"b{i}", "target_id": f"b{i + 1}"} for i in range(19_999)]
    fr = make_run(dag=dag_with(*nodes, edges=edges))
    started = time.perf_counter()
    t = flatten_run(fr, CTX)
    assert time.perf_counter() - started < 20
    assert t["blocks"].num_rows == 20_000
    assert t["edges"].num_rows == 19_999
    assert t["block_sources"].num_rows == 20_000
    assert t["blocks"].column("content")[19_999].as_py() == "content 19999"
    assert only(t, "runs")["block_count"] == 20_000


# ----------------------------------------------------------------------------------- batch


def test_flatten_batch_concatenates_and_rejects_duplicates():
    a = make_run(run_id="run-a")
    b = make_run(run_id="run-b", dag=None, tasks=None, terminal_at=T0 + timedelta(seconds=1))
    t = flatten_batch([a, b], CTX)
    assert t["runs"].column("run_id").to_pylist() == ["run-a", "run-b"]
    assert set(t["blocks"].column("run_id").to_pylist()) == {"run-a"}
    for name, table in t.items():
        assert table.schema.equals(TABLES[name], check_metadata=True)
    with pytest.raises(ValueError, match="twice"):
        flatten_batch([a, a], CTX)
    empty = flatten_batch([], CTX)
    assert all(empty[n].num_rows == 0 and empty[n].schema == TABLES[n] for n in TABLES)


def test_partitions_follow_the_utc_terminal_date():
    late = make_run(run_id="late", terminal_at=T0)  # 23:59:59 UTC on 04-21
    plus2 = timezone(timedelta(hours=2))
    early = make_run(run_id="early", terminal_at=datetime(2026, 4, 22, 1, 0, tzinfo=plus2))
    naive = make_run(run_id="naive", terminal_at=datetime(2026, 4, 23, 0, 0))
    assert [partition_dt(r) for r in (late, early, naive)] == [
        "2026-04-21",
        "2026-04-21",
        "2026-04-23",
    ]
    parts = flatten_batch_by_dt([late, early, naive], CTX)
    assert list(parts) == ["2026-04-21", "2026-04-23"]
    assert parts["2026-04-21"]["runs"].column("run_id").to_pylist() == ["late", "early"]
    ts = parts["2026-04-21"]["runs"].column("terminal_at").to_pylist()
    assert ts[1] == datetime(2026, 4, 21, 23, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------------ fuzz


def random_json(rng: Any, depth: int = 0) -> Any:
    """Random JSON biased towards the keys flatten looks at."""
    keys = ["id", "url", "download_url", "children", "sources", "nodes", "edges", "content"]
    keys += ["completed", "not_completed", "errors", "result", "metadata", "task_id", "name"]
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 2**70, 1.5])
    if kind in (2, 3):
        return rng.choice(["", "x", "https://a.example/?sig=1", "\x00\u202e😀", "\ud800"])
    if kind in (4, 5):
        return rng.choice(keys)
    if kind in (6, 7):
        return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(5))}
    return [random_json(rng, depth + 1) for _ in range(rng.randrange(5))]


def parse_or_none(text: str | None) -> Any:
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return None


def has_key(value: Any, key: str) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if key in v:
                return True
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def test_fuzz_random_shapes_and_corrupted_bytes_never_crash():
    import random

    rng = random.Random(20260421)
    fixture = FIXTURE_DAG.encode()
    for i in range(300):
        indent = rng.choice([None, 0, 2, "\t"])
        docs: list[Any] = [json.dumps(random_json(rng), indent=indent) for _ in range(3)]
        for d in docs:
            assert repr(parse_json(d)[0]) == repr(json.loads(d))
        if i % 3 == 0:  # corrupt a byte of a real payload: invalid JSON or invalid UTF-8
            raw = bytearray(fixture)
            raw[rng.randrange(len(raw))] = rng.choice([0xFF, ord("{"), ord('"'), 0xC3])
            try:
                docs[1] = RawDoc.parse(bytes(raw))
            except ValueError:
                docs[1] = RawDoc(text=bytes(raw).decode("utf-8", "replace"), value=None)
        fr = FetchedRun(
            f"run-{i}",
            *(d if isinstance(d, RawDoc) else RawDoc.parse(d) for d in docs),
            [],
            [],
            None,
            None,
            T0,
        )
        t = flatten_run(fr, CTX)
        for name, table in t.items():
            assert table.schema.equals(TABLES[name], check_metadata=True)
        for table in t.values():
            for col in ("raw_json", "dag_raw_json", "tasks_raw_json", "sources_json"):
                if col in table.column_names:
                    for text in table.column(col).to_pylist():
                        assert not has_key(parse_or_none(text), "download_url")
