"""The real Dagster definitions, pointed at a simulator and a scratch archive.

Resources are chosen from the environment (`defs/resources.py`), exactly as in `dagster
dev`; this sets that environment, builds the definitions and opens an instance under a
scratch DAGSTER_HOME (with the demo's instance config: one audit writer at a time).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from spine_pipeline.driver import prepare_dagster_home


@contextlib.contextmanager
def pipeline_env(
    *, base_url: str, api_key: str, workdir: Path, extra: dict[str, str] | None = None
) -> Iterator[tuple[dg.Definitions, dg.DagsterInstance]]:
    """(definitions, instance) with SPINE_* and DAGSTER_HOME set to `workdir`; restored after."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        "SPINE_API_KEY": api_key,
        "SPINE_BASE_URL": base_url,
        "SPINE_ARCHIVE_URI": str(workdir / "archive"),
        "SPINE_AUDIT_DB": str(workdir / "audit.duckdb"),
        "DAGSTER_HOME": str(workdir / "dagster_home"),
        **(extra or {}),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        prepare_dagster_home()
        from spine_pipeline.definitions import build_definitions

        defs = build_definitions()
        with dg.DagsterInstance.get() as instance:
            yield defs, instance
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
