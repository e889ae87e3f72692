"""The end-of-soak verdict: archive and audit database against the simulator's ground truth.

Every check compares with what Spine (the simulator) really holds, never with what the
pipeline says it did: every terminal run exactly once, every block's content and sources
byte for byte, every edge, task, error and artifact hash, in both the Parquet archive (read
through the manifests) and the DuckDB audit database.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spine_pipeline.archive.ledger import Ledger
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.read import read_committed
from spine_pipeline.archive.stores import ObjectStore
from spine_pipeline.audit import connect_readonly
from spine_pipeline.simulator.jsonio import dumps
from spine_pipeline.simulator.world import RunTruth, World

_EXAMPLES = 3


@dataclass(frozen=True)
class Check:
    """One named verdict with a short detail (counts and the first few offenders)."""

    name: str
    ok: bool
    detail: str


class _Mismatches:
    """Collects offenders per aspect; reports counts and a few examples."""

    def __init__(self) -> None:
        self.by_aspect: dict[str, list[str]] = defaultdict(list)

    def add(self, aspect: str, run_id: str, detail: str = "") -> None:
        self.by_aspect[aspect].append(f"{run_id[:8]}{': ' + detail if detail else ''}")

    def check(self, name: str, aspects: Iterable[str], checked: str) -> Check:
        bad = {a: self.by_aspect[a] for a in aspects if self.by_aspect.get(a)}
        if not bad:
            return Check(name, True, checked)
        parts = [f"{a}: {len(v)} ({'; '.join(v[:_EXAMPLES])})" for a, v in bad.items()]
        return Check(name, False, ", ".join(parts))


def _rows_by_run(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        out[row["run_id"]].append(row)
    for group in out.values():
        group.sort(key=lambda r: r.get("ordinal") or 0)
    return out


def _task_ids(tasks: dict[str, Any] | None) -> Counter[str]:
    if not tasks:
        return Counter()
    stack = list(tasks.get("completed") or []) + list(tasks.get("not_completed") or [])
    ids: Counter[str] = Counter()
    while stack:
        task = stack.pop()
        if isinstance(task, dict):
            ids[str(task.get("task_id"))] += 1
            stack.extend(task.get("children") or [])
    return ids


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _compare_run(
    truth: RunTruth,
    run: dict[str, Any],
    tables: dict[str, dict[str, list[dict[str, Any]]]],
    bad: _Mismatches,
) -> None:
    run_id = truth.run_id
    final = truth.final_run or {}
    if run["status"] != truth.status:
        bad.add("status", run_id, f"{run['status']} != {truth.status}")
    result = final.get("result") if isinstance(final.get("result"), dict) else {}
    if run["final_output"] != (result or {}).get("final_output"):
        bad.add("final_output", run_id)
    metadata = final.get("metadata") if isinstance(final.get("metadata"), dict) else {}
    if run["credits_consumed"] != (metadata or {}).get("credits_consumed"):
        bad.add("credits", run_id)
    nodes = list((truth.dag or {}).get("nodes") or [])
    blocks = tables["blocks"].get(run_id, [])
    if len(blocks) != len(nodes):
        bad.add("block_count", run_id, f"{len(blocks)} != {len(nodes)}")
    for block, node in zip(blocks, nodes, strict=False):
        if block["block_id"] != node.get("id"):
            bad.add("block_id", run_id)
        content = node.get("content")
        if block["content"] != content:
            bad.add("block_content", run_id, str(node.get("id"))[:8])
        elif content is not None and block["content_sha256"] != _sha(content):
            bad.add("block_content_sha256", run_id)
        sources = dumps(node["sources"]) if "sources" in node else None
        if block["sources_json"] != sources:
            bad.add("block_sources", run_id, str(node.get("id"))[:8])
    edges = Counter((e["source_id"], e["target_id"]) for e in tables["edges"].get(run_id, []))
    want_edges = Counter(
        (e.get("source_id"), e.get("target_id")) for e in (truth.dag or {}).get("edges") or []
    )
    if edges != want_edges:
        bad.add("edges", run_id)
    tasks = Counter(str(t["task_id"]) for t in tables["tasks"].get(run_id, []))
    if tasks != _task_ids(truth.tasks):
        bad.add("tasks", run_id)
    errors = final.get("errors")
    want_errors = len(errors) if isinstance(errors, list) else 0
    if len(tables["run_errors"].get(run_id, [])) != want_errors:
        bad.add("run_errors", run_id)
    arts = {a["artifact_id"]: a for a in tables["artifacts"].get(run_id, [])}
    if set(arts) != set(truth.artifacts):
        bad.add("artifact_set", run_id)
    for art_id, art in truth.artifacts.items():
        row = arts.get(art_id)
        if row is None:
            continue
        if row["sha256"] != art.sha256 or row["size_bytes"] != art.size:
            bad.add("artifact_sha256", run_id, f"{art_id[:8]} {row['download_error']}")
        elif row["download_error"] is not None and "size mismatch" not in row["download_error"]:
            bad.add("artifact_error", run_id, row["download_error"][:60])


def check_against_ground_truth(
    world: World, store: ObjectStore, audit_db: str | Path, expected: set[str]
) -> list[Check]:
    """Archive and audit database vs ground truth for `expected` (every run Spine created)."""
    checks: list[Check] = []
    log = ManifestLog(store)
    log.refresh()
    names = ("runs", "blocks", "edges", "tasks", "artifacts", "run_errors")
    raw = {name: read_committed(store, name, log=log).to_pylist() for name in names}
    run_counts = Counter(r["run_id"] for r in raw["runs"])
    missing = sorted(expected - set(run_counts))
    extra = sorted(set(run_counts) - expected)
    dups = sorted(r for r, n in run_counts.items() if n > 1)
    checks.append(
        Check(
            "archive: every terminal run exactly once",
            not (missing or extra or dups),
            f"{len(run_counts)} runs archived of {len(expected)} created; missing "
            f"{len(missing)}, duplicated {len(dups)}, unexpected {len(extra)}",
        )
    )
    tables = {name: _rows_by_run(rows) for name, rows in raw.items()}
    bad = _Mismatches()
    runs = {r["run_id"]: r for r in raw["runs"]}
    blocks = 0
    for run_id in sorted(expected & set(runs)):
        truth = world.ground_truth(run_id)
        blocks += len((truth.dag or {}).get("nodes") or [])
        _compare_run(truth, runs[run_id], tables, bad)
    checked = f"{len(runs)} runs, {blocks} blocks, {len(raw['artifacts'])} artifacts compared"
    checks.append(
        bad.check(
            "archive: run records equal ground truth",
            ("status", "final_output", "credits"),
            checked,
        )
    )
    checks.append(
        bad.check(
            "archive: every block's content and sources byte-identical",
            ("block_count", "block_id", "block_content", "block_content_sha256", "block_sources"),
            f"{blocks} blocks",
        )
    )
    checks.append(
        bad.check(
            "archive: edges, tasks and errors complete",
            ("edges", "tasks", "run_errors"),
            f"{sum(len(v) for v in tables['edges'].values())} edges, "
            f"{sum(len(v) for v in tables['tasks'].values())} tasks",
        )
    )
    checks.append(
        bad.check(
            "archive: every artifact's sha256 identical",
            ("artifact_set", "artifact_sha256", "artifact_error"),
            f"{len(raw['artifacts'])} artifacts",
        )
    )
    checks.extend(_check_audit_db(audit_db, raw, expected, log, store))
    return checks


def _check_audit_db(
    audit_db: str | Path,
    raw: dict[str, list[dict[str, Any]]],
    expected: set[str],
    log: ManifestLog,
    store: ObjectStore,
) -> list[Check]:
    con = connect_readonly(audit_db)
    try:
        runs = Counter(r for (r,) in con.execute("select run_id from runs").fetchall())
        blocks = {
            (r, o): s
            for r, o, s in con.execute(
                "select run_id, ordinal, content_sha256 from blocks"
            ).fetchall()
        }
        artifacts = {
            (r, a): s
            for r, a, s in con.execute(
                "select run_id, artifact_id, sha256 from artifacts"
            ).fetchall()
        }
        counts = {
            table: (con.execute(f"select count(*) from {table}").fetchone() or (0,))[0]
            for table in ("edges", "tasks", "run_errors")
        }
        (manifests,) = con.execute("select count(*) from manifests").fetchone() or (0,)
        (submissions,) = con.execute("select count(*) from submissions").fetchone() or (0,)
    finally:
        con.close()
    dups = [r for r, n in runs.items() if n > 1]
    checks = [
        Check(
            "audit db: every terminal run exactly once",
            set(runs) == expected and not dups,
            f"{len(runs)} runs; missing {len(expected - set(runs))}, duplicated {len(dups)}",
        )
    ]
    want_blocks = {(b["run_id"], b["ordinal"]): b["content_sha256"] for b in raw["blocks"]}
    want_arts = {(a["run_id"], a["artifact_id"]): a["sha256"] for a in raw["artifacts"]}
    same_children = all(counts[t] == len(raw[t]) for t in counts)
    checks.append(
        Check(
            "audit db: blocks, artifacts, edges, tasks, errors equal the archive",
            blocks == want_blocks and artifacts == want_arts and same_children,
            f"{len(blocks)} blocks, {len(artifacts)} artifacts, "
            + ", ".join(f"{counts[t]} {t}" for t in counts),
        )
    )
    ledger = sum(1 for _ in Ledger(store).submissions())
    checks.append(
        Check(
            "audit db: manifests and submissions complete",
            manifests == len(log.manifests) and submissions == ledger,
            f"{manifests}/{len(log.manifests)} manifests, {submissions}/{ledger} submissions",
        )
    )
    return checks
