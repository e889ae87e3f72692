"""Project settings from the environment (design.md 4.1), resolved in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_ARCHIVE_URI = "data/archive"
DEFAULT_AUDIT_DB = "data/audit.duckdb"
DEFAULT_CATALOG = "data/requests.yaml"


@dataclass(frozen=True)
class PipelineSettings:
    archive_uri: str
    audit_db: str
    catalog_path: str

    @classmethod
    def from_env(cls) -> PipelineSettings:
        return cls(
            archive_uri=os.environ.get("SPINE_ARCHIVE_URI") or DEFAULT_ARCHIVE_URI,
            audit_db=os.environ.get("SPINE_AUDIT_DB") or DEFAULT_AUDIT_DB,
            catalog_path=os.environ.get("SPINE_CATALOG") or DEFAULT_CATALOG,
        )
