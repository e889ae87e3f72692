"""A fetched run, or a batch of them, to the seven Arrow tables.

`flatten_run` parses the three documents once each (`slicing.load_doc`), hands them to the
per-table mappers (`dag`, `tasks`, `runs`) and builds the tables; `flatten_batch` and
`flatten_batch_by_dt` concatenate runs and enforce exactly-once within a batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from spine_pipeline.archive.arrow_schemas import TABLES
from spine_pipeline.archive.flatten.columns import Cols
from spine_pipeline.archive.flatten.dag import artifact_node_ids, flatten_dag
from spine_pipeline.archive.flatten.runs import add_run, flatten_artifacts, flatten_run_doc
from spine_pipeline.archive.flatten.slicing import SourceDoc, load_doc, unparsed_row
from spine_pipeline.archive.flatten.tasks import flatten_tasks
from spine_pipeline.archive.flatten.values import Buffer, as_utc, first_str
from spine_pipeline.archive.records import BatchContext, FetchedRun

__all__ = ["flatten_batch", "flatten_batch_by_dt", "flatten_run", "partition_dt"]


def _object(doc: SourceDoc | None) -> dict[str, Any]:
    """A parsed document's value if it is a JSON object, else an empty one."""
    return doc.value if doc is not None and isinstance(doc.value, dict) else {}


def flatten_run(run: FetchedRun, ctx: BatchContext) -> dict[str, pa.Table]:
    """All seven tables for one terminal run (empty tables where a part is missing).

    Never raises on payload content: problems are recorded in `runs.fetch_errors`.
    """
    problems = [str(e) for e in run.fetch_errors]
    run_doc = load_doc(run.run, "run", problems)
    dag_doc = load_doc(run.dag, "dag", problems)
    tasks_doc = load_doc(run.tasks, "tasks", problems)

    rv, dv, tv = _object(run_doc), _object(dag_doc), _object(tasks_doc)
    canvas_id = first_str(rv.get("canvas_id"), dv.get("canvas_id"), tv.get("canvas_id"))

    t = {name: Cols(name) for name in TABLES}

    dag_raw: tuple[str | Buffer | None, bytes | None] = (None, None)
    if dag_doc is not None:
        dag_raw = flatten_dag(
            dag_doc, artifact_node_ids(rv, run), t["blocks"], t["block_sources"], t["edges"]
        )
    elif run.dag is not None:
        dag_raw = unparsed_row(run.dag)

    tasks_raw: tuple[str | Buffer | None, bytes | None] = (None, None)
    if tasks_doc is not None:
        tasks_raw = flatten_tasks(tasks_doc, t["tasks"])
    elif run.tasks is not None:
        tasks_raw = unparsed_row(run.tasks)

    texts = flatten_run_doc(run_doc, run.run, t["run_errors"])
    flatten_artifacts(run.artifacts, t["artifacts"])
    texts.update(
        dag_raw_json=dag_raw[0],
        dag_raw_bytes=dag_raw[1],
        tasks_raw_json=tasks_raw[0],
        tasks_raw_bytes=tasks_raw[1],
    )
    add_run(t["runs"], run, rv, dv, canvas_id, t, problems, texts)

    const = {
        "run_id": run.run_id,
        "canvas_id": canvas_id,
        "batch_id": ctx.batch_id,
        "archived_at": as_utc(ctx.archived_at),
    }
    big = any(d is not None and d.bigs for d in (run.run, run.dag, run.tasks))
    return {
        name: cols.build({k: v for k, v in const.items() if k in cols.names}, big)
        for name, cols in t.items()
    }


def flatten_batch(runs: Iterable[FetchedRun], ctx: BatchContext) -> dict[str, pa.Table]:
    """All seven tables for a batch; raises ValueError if a run id repeats (exactly-once)."""
    seen: set[str] = set()
    parts: dict[str, list[pa.Table]] = {name: [] for name in TABLES}
    for run in runs:
        if run.run_id in seen:
            raise ValueError(f"run {run.run_id!r} appears twice in one batch")
        seen.add(run.run_id)
        for name, table in flatten_run(run, ctx).items():
            parts[name].append(table)
    return {
        name: pa.concat_tables(tables) if tables else TABLES[name].empty_table()
        for name, tables in parts.items()
    }


def partition_dt(run: FetchedRun) -> str:
    """The `dt=` partition of a run: the UTC date it became terminal (YYYY-MM-DD)."""
    return as_utc(run.terminal_at).date().isoformat()  # type: ignore[union-attr]


def flatten_batch_by_dt(
    runs: Iterable[FetchedRun], ctx: BatchContext
) -> dict[str, dict[str, pa.Table]]:
    """`flatten_batch` split by `dt=` partition: {dt: {table: rows}} (one file per table per dt)."""
    by_dt: dict[str, list[FetchedRun]] = {}
    for run in runs:
        by_dt.setdefault(partition_dt(run), []).append(run)
    seen: set[str] = set()
    for group in by_dt.values():
        for run in group:
            if run.run_id in seen:
                raise ValueError(f"run {run.run_id!r} appears twice in one batch")
            seen.add(run.run_id)
    return {dt: flatten_batch(group, ctx) for dt, group in sorted(by_dt.items())}
