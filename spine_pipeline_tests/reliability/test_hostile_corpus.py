"""Invariant 6: the hostile payload corpus through the real Dagster path, on both backends.

One simulator run per hostile case plus innocent bystanders, all submitted and tracked, then
polled by `spine_poll_sensor`, archived by `archive_spine_runs` in the same batches and
ingested by the `refresh_audit_db` runs the sensor requests. Each case must be archived faithfully (compared with the
simulator's ground truth, in the archive and in the audit database) or refused with a clear
error recorded on the run, and must never escape the archive root, crash the sensor, or
harm the bystanders. Unit-level cases of the same shapes are in
`spine_pipeline_tests/archive/test_flatten.py` and `spine_pipeline_tests/simulator/`.
"""

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from soak.check import check_against_ground_truth
from spine_pipeline.archive.layout import (
    ARTIFACT_PREFIX,
    CHECKPOINT_PREFIX,
    IDENTITY_KEY,
    LEDGER_PREFIX,
    MANIFEST_PREFIX,
    TABLE_PREFIX,
    parse_artifact_key,
)
from spine_pipeline.archive.ledger import Ledger
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.read import read_committed
from spine_pipeline.archive.stores import open_store
from spine_pipeline.archive.verify import verify_archive
from spine_pipeline.audit import connect_readonly
from spine_pipeline.driver import tick_and_launch
from spine_pipeline.simulator import SimulatorConfig, SimulatorServer
from spine_pipeline.simulator.content import (
    BAD_UTF8_BYTES,
    DEEP_TASK_LEVELS,
    HOSTILE_NAMES,
    HUGE_CONTENT_BYTES,
    MANY_BLOCKS,
    ODD_SOURCES_BIG,
)
from spine_pipeline.simulator.jsonio import dumps
from spine_pipeline.spine import RetryPolicy, SpineClient
from spine_pipeline.submission import SubmitSpec, submit_and_record

FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05, jitter=0.0)
CASES = {
    "hostile-names": "[scenario:hostile-names] Names that look like paths",
    "huge-content": "[scenario:huge-content] One block of 20 MB",
    "many-blocks": "[scenario:many-blocks] A canvas of 20,000 blocks",
    "deep-tasks": "[scenario:deep-tasks] A task tree 5,000 levels deep",
    "odd-sources": "[scenario:odd-sources] Sources as strings, nulls, nested arrays, 10,000",
    "unknown-status": "[scenario:unknown-status] Statuses cancelled and queued",
    "unknown-fields": "[scenario:unknown-fields] Unknown fields at every level",
    "bad-utf8": "[scenario:bad-utf8] Invalid UTF-8 inside the DAG",
    "invalid-json": "[scenario:invalid-json] A DAG body that is not JSON",
    "lying-length": "[scenario:lying-length] A Content-Length that lies",
    "size-mismatch": "[scenario:size-mismatch] size_bytes that disagrees",
    "canvas-404": "[scenario:canvas-404] A canvas that 404s on a completed run",
    "duplicate-blocks": "[scenario:duplicate-blocks] Two blocks, one id",
}
BYSTANDERS = (
    "[scenario:completed] Innocent report",
    "[scenario:partial] Innocent partial run",
    "[scenario:failed] Innocent failed run",
)


@dataclass
class Corpus:
    sim: SimulatorServer
    uri: str
    root: Path | None
    audit_db: str
    ids: dict[str, str]
    bystanders: list[str]
    tables: dict[str, list[dict[str, Any]]]
    ticks: int
    archive_runs: list[bool]

    def rows(self, table: str, case: str) -> list[dict[str, Any]]:
        run_id = self.ids[case]
        found = [r for r in self.tables[table] if r["run_id"] == run_id]
        return sorted(found, key=lambda r: r.get("ordinal") or r.get("idx") or 0)

    def run(self, case: str) -> dict[str, Any]:
        (row,) = self.rows("runs", case)
        return row

    def truth(self, case: str) -> Any:
        return self.sim.world.ground_truth(self.ids[case])

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        con = connect_readonly(self.audit_db)
        try:
            return con.execute(query, list(params)).fetchall()
        finally:
            con.close()


def _drive(defs: dg.Definitions, instance: dg.DagsterInstance, store: Any, ids: set[str]):
    """The daemon's loop: evaluate the sensor, execute the runs it asks for, until all are
    archived and the sensor asks for nothing more (the audit database has caught up)."""
    cursor, ticks, runs = None, 0, []
    deadline = time.monotonic() + 300
    while True:
        # Raises if the sensor crashes; a failed run only counts.
        tick = tick_and_launch(defs, instance, cursor, say=lambda _: None)
        ticks += 1
        cursor = tick.cursor
        runs.append(tick.failed == 0)
        log = ManifestLog(store)
        log.refresh()
        if ids <= set(log.committed_runs) and tick.idle:
            return ticks, runs
        assert time.monotonic() < deadline, f"not archived: {ids - set(log.committed_runs)}"
        time.sleep(0.2)


@pytest.fixture(scope="module", params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def corpus(request, tmp_path_factory) -> Corpus:
    tmp = tmp_path_factory.mktemp(f"corpus-{request.param}")
    with (
        pytest.MonkeyPatch.context() as mp,
        SimulatorServer(
            SimulatorConfig(seed=606, run_seconds=(0.2, 0.4), artifact_size_scale=0.3), port=0
        ) as sim,
    ):
        if request.param == "s3":
            server = request.getfixturevalue("s3_server")
            if not server.running:
                server.start()
            uri = f"s3://{server.make_bucket()}/corpus"
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
                mp.delenv(name, raising=False)
            mp.setenv("AWS_ENDPOINT_URL_S3", server.endpoint_url)
            mp.setenv("AWS_ACCESS_KEY_ID", server.access_key)
            mp.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
            mp.setenv("AWS_REGION", server.region)
            root = None
        else:
            root = tmp / "nest" / "archive"
            uri = str(root)
        audit_db = str(tmp / "audit.duckdb")
        for name, value in {
            "SPINE_API_KEY": sim.api_key,
            "SPINE_BASE_URL": sim.base_url,
            "SPINE_ARCHIVE_URI": uri,
            "SPINE_AUDIT_DB": audit_db,
            "SPINE_POLL_MIN_INTERVAL_SECONDS": "0.1",
            "SPINE_POLL_MAX_INTERVAL_SECONDS": "0.2",
        }.items():
            mp.setenv(name, value)
        from spine_pipeline.definitions import build_definitions

        store = open_store(uri)
        ledger = Ledger(store)
        with SpineClient(api_key=sim.api_key, base_url=sim.base_url, retry=FAST) as client:

            def submit(prompt: str) -> str:
                spec = SubmitSpec(prompt, template="report", request_name="corpus")
                return submit_and_record(client, ledger, spec, source="test").created.run_id

            ids = {case: submit(prompt) for case, prompt in CASES.items()}
            bystanders = [submit(p) for p in BYSTANDERS]
        sim.world.finish_all()
        with dg.instance_for_test() as instance:
            ticks, runs = _drive(
                build_definitions(), instance, store, set(ids.values()) | set(bystanders)
            )
        names = ("runs", "blocks", "block_sources", "edges", "tasks", "artifacts", "run_errors")
        tables = {name: read_committed(store, name).to_pylist() for name in names}
        yield Corpus(sim, uri, root, audit_db, ids, bystanders, tables, ticks, runs)


# -- the whole corpus ---------------------------------------------------------------------


def test_every_hostile_run_and_bystander_is_archived_exactly_once(corpus):
    expected = set(corpus.ids.values()) | set(corpus.bystanders)
    counts = Counter(r["run_id"] for r in corpus.tables["runs"])
    assert set(counts) == expected and set(counts.values()) == {1}
    audit = Counter(r for (r,) in corpus.sql("select run_id from runs"))
    assert audit == counts
    assert all(corpus.archive_runs), "an archive run failed"
    assert verify_archive(open_store(corpus.uri)).ok


def test_bystanders_are_untouched_by_their_hostile_batch_mates(corpus):
    store = open_store(corpus.uri)
    checks = check_against_ground_truth(
        corpus.sim.world, store, corpus.audit_db, set(corpus.bystanders)
    )
    # The audit checks compare the whole database; only the archive comparisons are per run.
    for check in checks:
        if check.name.startswith("archive:") and "exactly once" not in check.name:
            assert check.ok, f"{check.name}: {check.detail}"


def test_nothing_escapes_the_archive_root(corpus):
    store = open_store(corpus.uri)
    keys = [i.key for i in store.list("")]
    prefixes = (TABLE_PREFIX, ARTIFACT_PREFIX, MANIFEST_PREFIX, LEDGER_PREFIX, CHECKPOINT_PREFIX)
    outside = [k for k in keys if k != IDENTITY_KEY and not k.startswith(prefixes)]
    assert keys and not outside, outside
    assert not any(seg in ("..", ".") for k in keys for seg in k.split("/"))
    names = [a["storage_uri"] for a in corpus.rows("artifacts", "hostile-names")]
    assert all(n is None or parse_artifact_key(n) for n in names)
    if corpus.root is not None:  # locally: no file appeared anywhere but the root
        base = corpus.root.parent.parent
        stray = [
            p
            for p in base.rglob("*")
            if p not in (corpus.root, corpus.root.parent)
            and corpus.root not in p.parents
            and not p.name.startswith("audit.duckdb")
        ]
        assert stray == []


# -- one test per case --------------------------------------------------------------------


def test_hostile_names_are_archived_byte_for_byte(corpus):
    truth = corpus.truth("hostile-names")
    arts = corpus.rows("artifacts", "hostile-names")
    assert Counter(a["name"] for a in arts) == Counter(a.name for a in truth.artifacts.values())
    assert set(HOSTILE_NAMES) <= {a["name"] for a in arts}
    for a in arts:
        assert a["sha256"] == truth.artifacts[a["artifact_id"]].sha256
    blocks = corpus.rows("blocks", "hostile-names")
    assert [b["name"] for b in blocks] == [n["name"] for n in truth.dag["nodes"]]
    assert corpus.run("hostile-names")["canvas_name"] == truth.dag["canvas_name"]
    audit = corpus.sql(
        "select name from artifacts where run_id = ? order by ordinal", corpus.ids["hostile-names"]
    )
    assert [n for (n,) in audit] == [a["name"] for a in arts]


def test_20_mb_of_content_in_one_block(corpus):
    truth = corpus.truth("huge-content")
    huge = [n for n in truth.dag["nodes"] if len(n.get("content") or "") >= 1_000_000]
    assert len(huge) == 1 and len(huge[0]["content"].encode()) == HUGE_CONTENT_BYTES
    (row,) = [b for b in corpus.rows("blocks", "huge-content") if b["block_id"] == huge[0]["id"]]
    assert row["content"] == huge[0]["content"]
    assert row["content_bytes"] == HUGE_CONTENT_BYTES
    sha = hashlib.sha256(huge[0]["content"].encode()).hexdigest()
    assert row["content_sha256"] == sha
    assert corpus.sql(
        "select content_sha256, octet_length(encode(content)) from blocks where block_id = ?",
        huge[0]["id"],
    ) == [(sha, HUGE_CONTENT_BYTES)]


def test_20000_blocks_in_one_canvas(corpus):
    truth = corpus.truth("many-blocks")
    assert len(truth.dag["nodes"]) >= MANY_BLOCKS
    blocks = corpus.rows("blocks", "many-blocks")
    assert [b["block_id"] for b in blocks] == [n["id"] for n in truth.dag["nodes"]]
    assert len(corpus.rows("edges", "many-blocks")) == len(truth.dag["edges"])
    assert corpus.sql(
        "select count(*) from blocks where run_id = ?", corpus.ids["many-blocks"]
    ) == [(len(truth.dag["nodes"]),)]


def test_a_task_tree_5000_levels_deep(corpus):
    tasks = corpus.rows("tasks", "deep-tasks")
    assert max(t["depth"] for t in tasks) == DEEP_TASK_LEVELS - 1
    truth = corpus.truth("deep-tasks").tasks
    stack, count = list(truth["completed"]) + list(truth["not_completed"]), 0
    while stack:
        node = stack.pop()
        count += 1
        stack.extend(node.get("children") or [])
    assert len(tasks) == count
    assert corpus.sql(
        "select count(*), max(depth) from tasks where run_id = ?", corpus.ids["deep-tasks"]
    ) == [(count, DEEP_TASK_LEVELS - 1)]


def test_sources_of_every_shape_and_ten_thousand_of_them(corpus):
    truth = corpus.truth("odd-sources")
    blocks = corpus.rows("blocks", "odd-sources")
    for block, node in zip(blocks, truth.dag["nodes"], strict=True):
        assert block["sources_json"] == (dumps(node["sources"]) if "sources" in node else None)
    big = [b for b in blocks if b["sources_count"] == ODD_SOURCES_BIG]
    assert len(big) == 1
    rows = [s for s in corpus.rows("block_sources", "odd-sources")]
    assert sum(1 for s in rows if s["block_ordinal"] == big[0]["ordinal"]) == ODD_SOURCES_BIG
    shapes = {type(json.loads(s["raw_json"])).__name__ for s in rows}
    assert {"NoneType", "str", "list", "dict"} <= shapes
    assert corpus.sql(
        "select count(*) from block_sources where run_id = ?", corpus.ids["odd-sources"]
    ) == [(len(rows),)]


def test_unknown_statuses_are_never_taken_for_terminal(corpus):
    run = corpus.sim.world.get_run(corpus.ids["unknown-status"])
    assert run.odd_status_left == 0  # the sensor did see "cancelled"/"queued" first
    assert run.odd_status in ("cancelled", "queued")
    assert corpus.run("unknown-status")["status"] == corpus.truth("unknown-status").status


def test_unknown_fields_at_every_level_are_kept_in_raw_json(corpus):
    run = corpus.run("unknown-fields")
    raw = json.loads(run["raw_json"])
    assert {"x_trace_id", "workspace"} <= set(raw)
    assert "billing" in raw["metadata"] and "summary_html" in raw["result"]
    assert all({"mime_type", "expires_in"} <= set(a) for a in raw["result"]["artifacts"])
    assert "schema_version" in json.loads(run["dag_raw_json"])
    assert "generated_at" in json.loads(run["tasks_raw_json"])
    for table, key in (("blocks", "position"), ("edges", "kind"), ("tasks", "tokens_used")):
        rows = corpus.rows(table, "unknown-fields")
        assert rows and all(key in json.loads(r["raw_json"]) for r in rows), table


def test_invalid_utf8_is_replaced_in_columns_and_kept_exactly_in_raw_bytes(corpus):
    blocks = corpus.rows("blocks", "bad-utf8")
    bad = [b for b in blocks if b["raw_bytes"] is not None]
    assert len(bad) == 1
    assert "\ufffd" in bad[0]["content"]
    assert BAD_UTF8_BYTES in bad[0]["raw_bytes"]
    truth = corpus.truth("bad-utf8")
    others = [b for b in blocks if b["raw_bytes"] is None]
    by_id = {n["id"]: n for n in truth.dag["nodes"]}
    assert others and all(b["content"] == by_id[b["block_id"]].get("content") for b in others)


def test_invalid_json_is_a_clear_error_and_the_rest_of_the_run_is_kept(corpus):
    # A clear error, and the evidence kept: the body that is not the JSON envelope (after
    # the archiver's re-reads) is archived verbatim in dag_raw_json; no block is derived.
    run = corpus.run("invalid-json")
    assert run["fetch_errors"] == [
        "dag: Malformed response: expected a JSON object (HTTP 200); "
        "body archived verbatim in dag_raw_json"
    ]
    assert run["dag_raw_json"].endswith("<!-- upstream timeout -->")
    assert run["block_count"] == 0
    assert corpus.rows("blocks", "invalid-json") == []
    assert corpus.rows("tasks", "invalid-json")  # the task tree was fine and is archived
    assert run["final_output"] == corpus.truth("invalid-json").final_run["result"]["final_output"]


def test_a_content_length_that_lies_is_a_clear_artifact_error(corpus):
    arts = corpus.rows("artifacts", "lying-length")
    truth = corpus.truth("lying-length")
    lying = [a for a in arts if a["download_error"]]
    assert len(lying) == 1 and "truncated" in lying[0]["download_error"]
    assert lying[0]["sha256"] is None and lying[0]["storage_uri"] is None
    for a in arts:
        if a is not lying[0]:
            assert a["sha256"] == truth.artifacts[a["artifact_id"]].sha256


def test_size_bytes_that_disagrees_keeps_the_real_bytes_and_says_so(corpus):
    arts = corpus.rows("artifacts", "size-mismatch")
    truth = corpus.truth("size-mismatch")
    (odd,) = [a for a in arts if a["download_error"]]
    assert "size mismatch" in odd["download_error"]
    real = truth.artifacts[odd["artifact_id"]]
    assert odd["sha256"] == real.sha256 and odd["size_bytes"] == real.size
    assert odd["reported_size_bytes"] == real.reported_size != real.size


def test_a_canvas_that_404s_on_a_completed_run(corpus):
    run = corpus.run("canvas-404")
    assert run["status"] == "completed"
    errors = " | ".join(run["fetch_errors"])
    assert "dag: Canvas not found" in errors and "(HTTP 404)" in errors
    assert corpus.rows("blocks", "canvas-404") == [] and corpus.rows("tasks", "canvas-404") == []


def test_duplicate_block_ids_keep_both_blocks(corpus):
    truth = corpus.truth("duplicate-blocks")
    blocks = corpus.rows("blocks", "duplicate-blocks")
    assert [b["block_id"] for b in blocks] == [n["id"] for n in truth.dag["nodes"]]
    twice = [i for i, n in Counter(b["block_id"] for b in blocks).items() if n > 1]
    assert twice
    assert corpus.sql(
        "select count(distinct ordinal) from blocks where run_id = ? and block_id = ?",
        corpus.ids["duplicate-blocks"],
        twice[0],
    ) == [(2,)]


def test_the_sensor_never_crashed_and_ticked_within_reason(corpus):
    assert corpus.ticks >= 2  # the unknown-status run needed more than one look
