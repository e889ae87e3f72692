"""One run's committed rows, read from exactly the files its manifest lists, hash-checked.

The evidence page (and the bundle built around it) must show what the archive *committed*,
nothing else: not a file a losing writer left behind, not a row another batch wrote later,
not bytes changed since the commit. So the loader:

1. finds the manifest that committed the run (the first one naming it: the archiver never
   commits a run twice, and the first commit is the one the hash chain and the inclusion
   proofs speak about);
2. reads only that manifest's table files in the run's `dt=` partition (the archiver writes a
   run's rows of every table under the `dt` of its `RunEntry`, `flatten.partition_dt`);
3. streams each file into an anonymous temporary file while hashing it, stops reading past the
   size the manifest records, and refuses the file unless size and sha256 both match: the
   Parquet reader then parses exactly the bytes that were checked (no second read of the
   store that could return other bytes);
4. reads the few columns the page needs, batch by batch, keeping only the run's rows. Memory
   is the run's own rows plus one Parquet batch, whatever else the batch file holds.

`read_run_data` is the core and takes any `open_file(key)`, so the evidence bundle (a
directory or zip holding the same files under the same keys) loads through the same code and
`verify-evidence` re-renders from exactly what the bundle holds. Nothing here imports Dagster.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spine_pipeline.archive.layout import key_dt
from spine_pipeline.archive.manifest import ArtifactEntry, FileEntry, Manifest, ManifestLog
from spine_pipeline.archive.stores import ObjectStore

__all__ = [
    "RUN_TABLES",
    "Artifact",
    "Block",
    "Edge",
    "EvidenceError",
    "RunData",
    "RunError",
    "RunNotArchived",
    "RunRow",
    "Source",
    "Task",
    "committing_manifest",
    "copy_checked",
    "load_run_data",
    "read_run_data",
    "read_runs_data",
    "run_files",
]

#: The archive tables that hold one run's data (every table keyed by run_id).
RUN_TABLES = ("runs", "blocks", "block_sources", "edges", "tasks", "artifacts", "run_errors")
T = TypeVar("T")
_CHUNK = 1 << 20
_BATCH_ROWS = 4096


class EvidenceError(ValueError):
    """The run's committed data cannot be read as committed: one line naming the object.

    A `ValueError`, so the CLI's `expected_errors` turns it into one line and exit 1.
    """


class RunNotArchived(EvidenceError):
    """No committed manifest names the run."""


# ----------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class RunRow:
    """The run's row of `runs` (columns the page shows)."""

    run_id: str
    canvas_id: str | None
    canvas_name: str | None
    canvas_url: str | None
    status: str | None
    prompt: str | None
    template: str | None
    template_used: str | None
    models_used: tuple[str | None, ...] | None
    credits_consumed: int | None
    duration_ms: int | None
    final_output: str | None
    request_name: str | None
    submitted_at: datetime | None
    terminal_at: datetime
    archived_at: datetime
    batch_id: str
    agent_instructions: str | None
    fetch_errors: tuple[str, ...]
    block_count: int
    edge_count: int
    task_count: int
    artifact_count: int
    error_count: int


@dataclass(frozen=True, slots=True)
class Source:
    """One element of a block's `sources` (block_sources row)."""

    idx: int
    url: str | None
    title: str | None
    raw_json: str


@dataclass(frozen=True, slots=True)
class Block:
    """One DAG node (blocks row) with its sources; `ordinal` is unique, `block_id` may not be."""

    ordinal: int
    block_id: str | None
    name: str | None
    type: str | None
    status: str | None
    content: str | None
    url: str | None
    url_redacted: bool
    content_sha256: str | None
    content_bytes: int | None
    sources_count: int
    sources: tuple[Source, ...]


@dataclass(frozen=True, slots=True)
class Edge:
    ordinal: int
    source_id: str | None
    target_id: str | None


@dataclass(frozen=True, slots=True)
class Task:
    """One task-tree row; rows are in preorder (`ordinal`), `parent_ordinal` links them."""

    ordinal: int
    task_id: str | None
    parent_ordinal: int | None
    depth: int
    name: str | None
    task_type: str | None
    status: str | None
    subtree: str
    child_count: int


@dataclass(frozen=True, slots=True)
class Artifact:
    ordinal: int
    artifact_id: str | None
    type: str | None
    name: str | None
    reported_size_bytes: int | None
    size_bytes: int | None
    sha256: str | None
    content_type: str | None
    download_error: str | None


@dataclass(frozen=True, slots=True)
class RunError:
    idx: int
    error: str | None
    block_id: str | None
    block_type: str | None
    recoverable: bool | None


@dataclass(frozen=True)
class RunData:
    """Everything the page renders, plus where it came from (for the bundle and its proof).

    Tuples are in the archive's own order (`ordinal`/`idx`), so equal data compare equal and
    render to the same bytes whatever order the files listed the rows in.
    """

    run: RunRow
    blocks: tuple[Block, ...]
    edges: tuple[Edge, ...]
    tasks: tuple[Task, ...]
    artifacts: tuple[Artifact, ...]
    errors: tuple[RunError, ...]
    manifest: Manifest  # the manifest that committed the run
    files: tuple[FileEntry, ...]  # the table files read (the bundle copies exactly these)
    artifact_entries: tuple[ArtifactEntry, ...]  # the manifest's artifacts of this run

    @property
    def run_id(self) -> str:
        return self.run.run_id


# ----------------------------------------------------------------------------- columns

_COLUMNS: dict[str, tuple[str, ...]] = {
    "runs": tuple(f for f in RunRow.__dataclass_fields__),
    "blocks": (
        "ordinal",
        "block_id",
        "name",
        "type",
        "status",
        "content",
        "url",
        "url_redacted",
        "content_sha256",
        "content_bytes",
        "sources_count",
    ),
    "block_sources": ("block_ordinal", "idx", "url", "title", "raw_json"),
    "edges": tuple(f for f in Edge.__dataclass_fields__),
    "tasks": tuple(f for f in Task.__dataclass_fields__),
    "artifacts": tuple(f for f in Artifact.__dataclass_fields__),
    "run_errors": tuple(f for f in RunError.__dataclass_fields__),
}


# ----------------------------------------------------------------------------- loading


def committing_manifest(log: ManifestLog, run_id: str) -> Manifest:
    """The manifest that committed `run_id` (the log must be refreshed); `RunNotArchived`."""
    seq = log.committed_runs.get(run_id)
    if seq is None:
        raise RunNotArchived(f"run {run_id} is not archived (no committed manifest names it)")
    manifest = log.manifests[seq - 1]  # read from seq 1, without gaps (refresh checks)
    if manifest.seq != seq:
        manifest = next(m for m in log.manifests if m.seq == seq)
    return manifest


def run_files(manifest: Manifest, run_id: str) -> tuple[FileEntry, ...]:
    """The manifest's table files that can hold `run_id`'s rows: those in its `dt=` partition."""
    entry = next((r for r in manifest.runs if r.run_id == run_id), None)
    if entry is None:
        raise RunNotArchived(f"run {run_id} is not in manifest {manifest.seq}")
    return tuple(
        f for f in manifest.files if f.table in RUN_TABLES and key_dt(f.key) in (entry.dt, None)
    )


def load_run_data(store: ObjectStore, run_id: str, *, log: ManifestLog | None = None) -> RunData:
    """`run_id`'s committed rows from the archive in `store` (chain checked while listing)."""
    if log is None:
        log = ManifestLog(store)
        log.refresh()
    manifest = committing_manifest(log, run_id)
    return read_run_data(manifest, run_id, store.open_read)


def read_run_data(
    manifest: Manifest, run_id: str, open_file: Callable[[str], IO[bytes]]
) -> RunData:
    """`run_id`'s rows from the files `manifest` lists, each checked against its entry."""
    data = read_runs_data(manifest, [run_id], open_file)[run_id]
    if isinstance(data, EvidenceError):
        raise data
    return data


def read_runs_data(
    manifest: Manifest, run_ids: Sequence[str], open_file: Callable[[str], IO[bytes]]
) -> dict[str, RunData | EvidenceError]:
    """Several runs committed by `manifest`, reading each of its files once.

    Why: the runs of a batch share its table files, so loading them one by one reads every
    file once per run (quadratic in the batch); Dagster writes the page of every run of a
    batch it just committed. A file that fails its check raises (it spoils every run);
    a run whose rows do not add up gets its `EvidenceError` as its value. Memory is the
    runs' own rows plus one Parquet batch.
    """
    wanted = {run_id: run_files(manifest, run_id) for run_id in dict.fromkeys(run_ids)}
    readers: dict[str, tuple[FileEntry, set[str]]] = {}
    for run_id, files in wanted.items():
        for entry in files:
            readers.setdefault(entry.key, (entry, set()))[1].add(run_id)
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {
        run_id: {t: [] for t in RUN_TABLES} for run_id in wanted
    }
    for entry, runs in readers.values():
        for row in _read_file(entry, runs, open_file):
            rows[row["run_id"]][entry.table].append(row)
    out: dict[str, RunData | EvidenceError] = {}
    for run_id, files in wanted.items():
        try:
            out[run_id] = _assemble(manifest, run_id, files, rows.pop(run_id))
        except EvidenceError as exc:
            out[run_id] = exc
    return out


def _assemble(
    manifest: Manifest,
    run_id: str,
    files: tuple[FileEntry, ...],
    rows: dict[str, list[dict[str, Any]]],
) -> RunData:
    if len(rows["runs"]) != 1:
        raise EvidenceError(
            f"run {run_id}: manifest {manifest.seq} has {len(rows['runs'])} runs rows for it"
        )
    run = _run_row(rows["runs"][0])
    sources = _sources_by_block(rows["block_sources"])
    blocks = tuple(
        Block(**_pick(r, "blocks"), sources=tuple(sources.get(r["ordinal"], ())))
        for r in sorted(rows["blocks"], key=lambda r: r["ordinal"])
    )
    data = RunData(
        run=run,
        blocks=blocks,
        edges=tuple(_typed(Edge, "edges", rows, "ordinal")),
        tasks=tuple(_typed(Task, "tasks", rows, "ordinal")),
        artifacts=tuple(_typed(Artifact, "artifacts", rows, "ordinal")),
        errors=tuple(_typed(RunError, "run_errors", rows, "idx")),
        manifest=manifest,
        files=files,
        artifact_entries=tuple(a for a in manifest.artifacts if a.run_id == run_id),
    )
    _check_counts(data)
    return data


def _read_file(
    entry: FileEntry, run_ids: set[str], open_file: Callable[[str], IO[bytes]]
) -> Iterator[dict[str, Any]]:
    """The rows of `run_ids` in one listed file, after checking its bytes against `entry`."""
    with tempfile.TemporaryFile(prefix="spine-evidence-") as spool:
        with open_file(entry.key) as src:
            copy_checked(src, spool, key=entry.key, size=entry.bytes, sha256=entry.sha256)
        spool.seek(0)
        try:
            parquet = pq.ParquetFile(spool)
            names = set(parquet.schema_arrow.names)
            wanted = sorted({"run_id", *_COLUMNS[entry.table]} & names)
            ids = pa.array(sorted(run_ids), type=parquet.schema_arrow.field("run_id").type)
            for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=wanted):
                mine = batch.filter(pc.is_in(batch.column("run_id"), value_set=ids))
                if mine.num_rows:
                    yield from mine.to_pylist()
        except (pa.ArrowException, KeyError) as exc:
            raise EvidenceError(f"{entry.key}: not a readable {entry.table} file ({exc})") from None


def copy_checked(
    src: IO[bytes], dest: IO[bytes], *, key: str, size: int, sha256: str, what: str = "manifest"
) -> None:
    """Copy `src` to `dest` while hashing it; `EvidenceError` unless exactly `size` bytes with
    this `sha256` came.

    Reading stops one byte past `size`, so a grown or endless object costs no more than the
    file it should be. The one rule for taking a listed object's bytes: the loader (into a
    spool the Parquet reader parses) and the bundle writer (into the bundle) both use it, so
    what is parsed or bundled is exactly what was checked. `dest` may hold a partial copy
    when this raises: the caller discards it.
    """
    digest = hashlib.sha256()
    got = 0
    while got <= size:
        chunk = src.read(min(_CHUNK, size + 1 - got))
        if not chunk:
            break
        digest.update(chunk)
        dest.write(chunk)
        got += len(chunk)
    if got != size:
        more = "more than" if got > size else f"{got}, not"
        raise EvidenceError(f"{key}: {more} the {size} bytes the {what} lists")
    if digest.hexdigest() != sha256:
        raise EvidenceError(f"{key}: sha256 {digest.hexdigest()} is not the {what}'s {sha256}")


def _pick(row: dict[str, Any], table: str) -> dict[str, Any]:
    """The row's values of the columns read for `table` (None for a column a file lacks)."""
    return {k: row.get(k) for k in _COLUMNS[table]}


def _run_row(row: dict[str, Any]) -> RunRow:
    values = _pick(row, "runs")
    models = values["models_used"]
    values["models_used"] = tuple(models) if models is not None else None
    values["fetch_errors"] = tuple(values["fetch_errors"] or ())
    return RunRow(**values)


def _typed(
    cls: Callable[..., T], table: str, rows: dict[str, list[dict[str, Any]]], order: str
) -> Iterator[T]:
    """Rows of `table` as `cls`, in the archive's order (`order` column)."""
    for r in sorted(rows[table], key=lambda r: r[order]):
        yield cls(**_pick(r, table))


def _sources_by_block(rows: Sequence[dict[str, Any]]) -> dict[int, list[Source]]:
    out: dict[int, list[Source]] = {}
    for r in sorted(rows, key=lambda r: (r["block_ordinal"], r["idx"])):
        out.setdefault(r["block_ordinal"], []).append(
            Source(idx=r["idx"], url=r.get("url"), title=r.get("title"), raw_json=r["raw_json"])
        )
    return out


def _check_counts(data: RunData) -> None:
    """The runs row's counts must match the rows read: a mismatch means rows are missing."""
    r = data.run
    for what, expected, got in (
        ("blocks", r.block_count, len(data.blocks)),
        ("edges", r.edge_count, len(data.edges)),
        ("tasks", r.task_count, len(data.tasks)),
        ("artifacts", r.artifact_count, len(data.artifacts)),
        ("run_errors", r.error_count, len(data.errors)),
    ):
        if expected != got:
            raise EvidenceError(
                f"run {r.run_id}: the runs row counts {expected} {what}, manifest "
                f"{data.manifest.seq}'s files hold {got}"
            )
