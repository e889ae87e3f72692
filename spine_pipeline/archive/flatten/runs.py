"""The run record to rows: `runs`, `run_errors` and `artifacts`.

The `runs` row gathers what the other mappers found: the run document's own columns, the
canvas-level texts of the DAG and task tree, the row counts of the other tables (so they can
be checked) and every problem met on the way (`fetch_errors`). `artifacts` rows come from
the downloader's outcomes, not from a source text, so their `raw_json` is compact JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from spine_pipeline.archive.flatten.columns import Cols
from spine_pipeline.archive.flatten.slicing import SourceDoc, items_with_spans, unparsed_row
from spine_pipeline.archive.flatten.values import (
    as_bool,
    as_duration_ms,
    as_int,
    as_str,
    as_text,
    as_utc,
    checked_int,
    dumps_compact,
)
from spine_pipeline.archive.records import ArtifactOutcome, FetchedRun, RawDoc
from spine_pipeline.spine.rawjson import BigString
from spine_pipeline.spine.textfidelity import replace_surrogates

__all__ = ["CANVAS_URL", "add_run", "flatten_artifacts", "flatten_run_doc"]

CANVAS_URL = "https://app.getspine.ai/canvas/{}"


def _flatten_errors(doc: SourceDoc, errors: Cols) -> None:
    value = doc.value
    sp = doc.span.last_member("errors") if isinstance(value, dict) else None
    items = items_with_spans(value.get("errors") if isinstance(value, dict) else None, sp)
    for idx, (el, esp) in enumerate(items):
        e = el if isinstance(el, dict) else {}
        text, raw = doc.extract(esp.start, esp.end)
        errors.add(
            idx=idx,
            error=as_text(el) if isinstance(el, str | BigString) else as_text(e.get("error")),
            block_id=as_str(e.get("block_id")),
            block_type=as_str(e.get("block_type")),
            recoverable=as_bool(e.get("recoverable")),
            raw_json=text,
            raw_bytes=raw,
        )


def flatten_run_doc(doc: SourceDoc | None, raw: RawDoc, errors: Cols) -> dict[str, Any]:
    """`run_errors` rows, and the run document's JSON columns of the `runs` row.

    A run document that could not be parsed (`doc` None) is kept verbatim in `raw_json`.
    """
    if doc is None:
        text, original = unparsed_row(raw)
        return {
            "raw_json": text,
            "raw_bytes": original,
            "blocks_json": None,
            "progress_json": None,
        }
    doc.finalize()
    _flatten_errors(doc, errors)
    raw_json, raw_bytes = doc.extract_all()
    return {
        "raw_json": raw_json,
        "raw_bytes": raw_bytes,
        "blocks_json": doc.extract_span(doc.span.last_member("blocks"))[0],
        "progress_json": doc.extract_span(doc.span.last_member("progress"))[0],
    }


def flatten_artifacts(artifacts: list[ArtifactOutcome], cols: Cols) -> None:
    """One row per downloaded (or failed) artifact, in the order the run listed them."""
    for i, a in enumerate(artifacts):
        raw = a.raw
        if isinstance(raw, dict):
            raw = {k: v for k, v in raw.items() if k != "download_url"}
        cols.add(
            artifact_id=as_str(a.artifact_id),
            type=as_str(a.type),
            name=as_str(a.name),
            reported_size_bytes=as_int(a.reported_size_bytes),
            size_bytes=as_int(a.size_bytes),
            sha256=as_str(a.sha256),
            storage_uri=as_str(a.storage_uri),
            content_type=as_str(a.content_type),
            downloaded_at=as_utc(a.downloaded_at),
            download_error=as_str(a.download_error),
            ordinal=i,
            raw_json=dumps_compact(raw),
        )


def add_run(
    runs: Cols,
    run: FetchedRun,
    run_value: dict[str, Any],
    dag_value: dict[str, Any],
    canvas_id: str | None,
    tables: Mapping[str, Cols],
    problems: list[str],
    texts: Mapping[str, Any],
) -> None:
    """The `runs` row; `texts` are its JSON columns (`flatten_run_doc`, DAG and task tree)."""
    result = r if isinstance(r := run_value.get("result"), dict) else {}
    meta = m if isinstance(m := run_value.get("metadata"), dict) else {}
    models = meta.get("models_used")
    final_output = result.get("final_output", run_value.get("final_output"))
    credits = checked_int(meta.get("credits_consumed"), "metadata.credits_consumed", problems)
    duration = as_duration_ms(run_value.get("duration_ms"), problems)
    runs.add(
        canvas_id=canvas_id,
        canvas_name=as_str(dag_value.get("canvas_name")),
        canvas_url=None
        if canvas_id is None
        else CANVAS_URL.format(quote(replace_surrogates(canvas_id), "")),
        status=as_str(run_value.get("status")),
        prompt=as_text(run_value.get("prompt")),
        template=as_str(run_value.get("template")),
        template_used=as_str(meta.get("template_used")),
        models_used=[as_str(m) for m in models] if isinstance(models, list) else None,
        credits_consumed=credits,
        duration_ms=duration,
        final_output=as_text(final_output),
        error_count=tables["run_errors"].n,
        block_count=tables["blocks"].n,
        artifact_count=tables["artifacts"].n,
        edge_count=tables["edges"].n,
        task_count=tables["tasks"].n,
        request_name=as_str(run.request_name),
        submitted_at=as_utc(run.submitted_at),
        terminal_at=as_utc(run.terminal_at),
        agent_instructions=as_text(run_value.get("agent_instructions")),
        fetch_errors=problems,
        **texts,
    )
