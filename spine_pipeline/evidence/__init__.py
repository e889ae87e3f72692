"""Evidence of one run for auditors: its committed data, and an offline page showing it.

- `run_data`: `load_run_data(store, run_id)` reads the run's rows from exactly the files the
  committing manifest lists, hash-checked, into a typed `RunData`;
- `page`: `render_page(data)` renders one self-contained, script-free HTML page, a
  deterministic function of its input (so a bundled page can be checked by re-rendering);
- `dag_svg`: the canvas DAG laid out in layers as inline SVG;
- `bundle`: `write_bundle` writes one run as a self-contained evidence bundle (page, Parquet,
  artifacts, manifest, proof, SHA256SUMS), deterministically;
- `verify_bundle`: `verify_bundle` checks a bundle offline with only the public key.

A library: no Dagster, no DuckDB; the CLI (`show`, `evidence`, `verify-evidence`) and Dagster
(the `spine_run` page link) build on it. Limits and formats: docs/evidence.md.
"""

from __future__ import annotations

from spine_pipeline.evidence.page import render_page, render_page_bytes
from spine_pipeline.evidence.run_data import (
    EvidenceError,
    RunData,
    RunNotArchived,
    load_run_data,
    read_run_data,
)

__all__ = [
    "EvidenceError",
    "RunData",
    "RunNotArchived",
    "load_run_data",
    "read_run_data",
    "render_page",
    "render_page_bytes",
]
