"""Garbage collection: remove files of batches that never committed.

A crashed writer leaves data files (and perhaps artifacts) that no manifest names; readers
never see them. After a grace period, long enough that no live writer can still be about to
commit them, they are deleted. Committed objects are never touched.

Unreferenced artifacts are only deleted on request (`include_artifacts`): artifact keys are
content addresses, so a live writer that finds an old unreferenced object with its bytes
reuses it instead of uploading again, and deleting it under that writer would break its
batch. The retry of a crashed batch usually references them again anyway. Stop archivers
before collecting artifacts.

Entries the store never trusts (a symlink, a fifo, a name no writer makes) are neither
followed nor deleted: they are listed in `GcReport.refused` for a human to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from spine_pipeline.archive.layout import ARTIFACT_AREA, TABLE_PREFIX
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.stores import ObjectInfo, ObjectStore, UntrustedObject
from spine_pipeline.progress import ProgressFn, Step, no_progress

DEFAULT_GRACE = timedelta(hours=6)


@dataclass
class GcReport:
    deleted: list[str] = field(default_factory=list)
    kept_young: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    #: Entries the store never trusts (symlinks, non-regular files, foreign names), as
    #: "key: reason": neither followed nor deleted, left for a human (`verify` warns too).
    refused: list[str] = field(default_factory=list)


def collect_garbage(
    store: ObjectStore,
    *,
    grace: timedelta = DEFAULT_GRACE,
    dry_run: bool = False,
    include_artifacts: bool = False,
    now: datetime | None = None,
    progress: ProgressFn = no_progress,
) -> GcReport:
    """Delete unlisted objects older than `grace`; the manifest chain must be intact.

    `progress` hears of each phase: reading the log, then each area listed, with the
    objects examined so far (a listing's length is not known ahead).
    """
    progress(Step("gc: reading the manifest log"))
    log = ManifestLog(store)
    log.refresh()  # raises ManifestError on a broken chain: never collect from a damaged log
    referenced = {f.key for m in log for f in m.files} | {a.key for m in log for a in m.artifacts}
    cutoff = (now or datetime.now(UTC)) - grace
    report = GcReport()
    # The areas `verify` checks (layout.CHAINED_PREFIXES) except manifests, never collected.
    prefixes = (TABLE_PREFIX, ARTIFACT_AREA) if include_artifacts else (TABLE_PREFIX,)
    for area, prefix in enumerate(prefixes, 1):
        progress(Step("gc: areas", area - 1, len(prefixes), f"scanning {prefix}"))
        report.refused.extend(f"{e.key}: {e.reason}" for e in store.refused(prefix))
        for info in _listed(store, prefix):
            if info.key in referenced:
                continue
            if info.last_modified > cutoff:
                report.kept_young.append(info.key)
                continue
            if not dry_run:
                store.delete(info.key)
            report.deleted.append(info.key)
            report.bytes_freed += info.size
    verb = "would remove" if dry_run else "removed"
    progress(
        Step("gc: areas", len(prefixes), len(prefixes), f"{verb} {len(report.deleted)} object(s)")
    )
    return report


def _listed(store: ObjectStore, prefix: str) -> Iterator[ObjectInfo]:
    """`store.list(prefix)`, empty if the area itself is behind a symlink (`refused` names it)."""
    try:
        yield from store.list(prefix)
    except UntrustedObject:
        return
