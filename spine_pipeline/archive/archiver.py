"""Archive a batch of terminal runs: fetch, download, flatten, write, commit.

Order is the protocol: data files, then artifacts, then the manifest. Until the manifest
exists the batch does not exist for readers, so a crash at any point leaves only garbage
(`gc` removes it) and the next attempt archives the runs again, under a new batch id. A run
already named by a committed manifest is skipped, which makes every retry safe.

All the fetching of one run (its GET, DAG, tasks and artifact downloads) has one deadline,
`SPINE_RUN_FETCH_DEADLINE_SECONDS`: read timeouts alone never end a reply that trickles a
byte every few seconds, and one such run would hold its whole batch. A run past it is left
for the next attempt (outcome `failed`, "fetch deadline"), and its batch-mates commit.

With a signing key (`SPINE_SIGNING_KEY`) the writer signs each manifest and, after the
commit, checkpoints the log and hands the checkpoint to the witnesses (`archive.tlog`). A
crash between the manifest and its checkpoint is repaired by the next batch, which first
checkpoints any uncheckpointed tail; a witness that contradicts the log (a rollback or a
fork of the archive) stops the writer before it commits anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from spine_pipeline.archive.arrow_schemas import SCHEMA_VERSION
from spine_pipeline.archive.artifacts import download_artifact
from spine_pipeline.archive.fetch import (
    NotTerminalError,
    TransientFetchError,
    fetch_canvas,
    fetch_run,
    get_lean_run,
    raw_doc,
    terminal_time,
)
from spine_pipeline.archive.flatten import flatten_batch_by_dt, partition_dt
from spine_pipeline.archive.flatten.values import as_int
from spine_pipeline.archive.identity import (
    check_spine,
    check_store_spine,
    ensure_identity,
    spine_of,
)
from spine_pipeline.archive.layout import table_key
from spine_pipeline.archive.manifest import (
    ArtifactEntry,
    FileEntry,
    Manifest,
    ManifestLog,
    RunEntry,
)
from spine_pipeline.archive.parquet import encode_table
from spine_pipeline.archive.records import BatchContext, FetchedRun
from spine_pipeline.archive.stores import AlreadyExists, ObjectStore
from spine_pipeline.archive.tlog import LogPublisher, SignedCheckpoint
from spine_pipeline.settings import Settings
from spine_pipeline.spine import AsyncSpineClient, SpineError
from spine_pipeline.spine.redact import RedactingFilter, redact

log = logging.getLogger(__name__)
log.addFilter(RedactingFilter())  # it logs unexpected errors, whose text may quote a server
COMMIT_ATTEMPTS = 20


class _FromSettings:
    """Default of `Archiver(publisher=...)`: build it from `SPINE_SIGNING_KEY`/`_WITNESS_URI`."""


FROM_SETTINGS = _FromSettings()


@dataclass(frozen=True)
class ArchiveRequest:
    """A run to archive, with what we know about it from submission."""

    run_id: str
    request_name: str | None = None
    submitted_at: datetime | None = None


@dataclass(frozen=True)
class RunOutcome:
    """What happened to one requested run. `outcome` is one of OUTCOMES."""

    run_id: str
    outcome: str
    message: str = ""
    status: str | None = None
    seq: int | None = None
    block_count: int = 0
    edge_count: int = 0
    task_count: int = 0
    artifact_count: int = 0
    artifact_errors: int = 0
    credits: int | None = None
    canvas_id: str | None = None

    def __post_init__(self) -> None:
        # The message reaches the CLI's stderr, Dagster's event log and the run's metadata;
        # it may quote what a server sent (any exception's text), so it is redacted here.
        object.__setattr__(self, "message", redact(self.message))


OUTCOMES = ("archived", "already_archived", "not_terminal", "failed")


@dataclass
class BatchResult:
    """The batch's manifest (None if nothing new was committed) and per-run outcomes.

    `checkpoint` is the signed checkpoint written after the batch's commit, for callers to
    report (None for an unsigned writer, or when nothing new was committed).
    """

    manifest: Manifest | None
    outcomes: list[RunOutcome] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: SignedCheckpoint | None = None

    def by_outcome(self, outcome: str) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.outcome == outcome]

    @property
    def ok(self) -> bool:
        return all(o.outcome in ("archived", "already_archived") for o in self.outcomes)


def new_batch_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}Z-{uuid.uuid4().hex[:12]}"


class Archiver:
    """Archives batches of runs into one archive root. Safe to run concurrently with others."""

    def __init__(
        self,
        store: ObjectStore,
        client_factory: Callable[[], AsyncSpineClient],
        *,
        concurrency: int = 8,
        workdir: Path | None = None,
        before_commit: Callable[[list[FileEntry]], None] | None = None,
        fetch_deadline: float | None = None,
        publisher: LogPublisher | _FromSettings | None = FROM_SETTINGS,
    ) -> None:
        self.store = store
        self.client_factory = client_factory
        self.concurrency = max(1, concurrency)
        settings = (
            Settings.from_env()
            if fetch_deadline is None or isinstance(publisher, _FromSettings)
            else None
        )
        if fetch_deadline is None:
            assert settings is not None
            fetch_deadline = settings.run_fetch_deadline_seconds
        self.fetch_deadline = fetch_deadline
        if isinstance(publisher, _FromSettings):
            assert settings is not None
            publisher = LogPublisher.from_settings(
                store, settings.signing_key, settings.witness_uris, settings.verify_key
            )
        #: Signs manifests and checkpoints the log; None: an unsigned writer.
        self.publisher: LogPublisher | None = publisher
        self.workdir = workdir
        self.before_commit = before_commit  # test hook: crash injection point
        self.log = ManifestLog(store)
        #: The checkpoint published after the last commit (reported in `BatchResult`).
        self.checkpoint: SignedCheckpoint | None = None
        #: The Spine this writer archives from (`identity.spine_of` of its client's base
        #: URL), known once a batch opens its client; None: not checked.
        self.spine: str | None = None

    def archive(self, requests: Sequence[ArchiveRequest | str]) -> BatchResult:
        """Blocking entry point (CLI, Dagster ops)."""
        return asyncio.run(self.archive_async(requests))

    async def archive_async(self, requests: Sequence[ArchiveRequest | str]) -> BatchResult:
        started = time.perf_counter()
        reqs = _dedupe(
            [r if isinstance(r, ArchiveRequest) else ArchiveRequest(r) for r in requests]
        )
        await asyncio.to_thread(self.log.refresh)
        self.checkpoint = None
        outcomes: dict[str, RunOutcome] = {}
        todo = []
        for req in reqs:
            seq = self.log.committed_runs.get(req.run_id)
            if seq is not None:
                outcomes[req.run_id] = self._already_archived(req, seq)
            else:
                todo.append(req)
        fetched: list[FetchedRun] = []
        if todo:
            with tempfile.TemporaryDirectory(prefix="spine-archive-", dir=self.workdir) as tmp:
                fetched = await self._fetch_all(todo, Path(tmp), outcomes)
        else:
            await asyncio.to_thread(self._check_log)
        fetch_done = time.perf_counter()
        manifest = None
        if fetched:
            manifest = await asyncio.to_thread(self._write_and_commit, fetched, outcomes)
        result = BatchResult(
            manifest=manifest,
            outcomes=[outcomes[r.run_id] for r in reqs],
            metrics={
                "runs_requested": len(reqs),
                "runs_archived": sum(1 for o in outcomes.values() if o.outcome == "archived"),
                "fetch_seconds": round(fetch_done - started, 3),
                "write_seconds": round(time.perf_counter() - fetch_done, 3),
            },
            checkpoint=self.checkpoint,
        )
        return result

    def _already_archived(self, req: ArchiveRequest, seq: int) -> RunOutcome:
        """A request for a run id a committed manifest names: skipped, unless it is not the
        same run.

        Spine's run has no creation time, but we know when we submitted it: a run submitted
        after the archived run of that id was already terminal cannot be that run. It is a
        Spine handing out an id twice (a simulator restarted with the same seed), and
        skipping it would lose the new run without a word, while archiving it would put two
        runs under one id. So it fails, loudly, and its batch-mates commit.
        """
        entry = self._run_entry(req.run_id, seq)
        archived_end = _parse_utc(entry.terminal_at) if entry is not None else None
        submitted = req.submitted_at
        if submitted is not None and submitted.tzinfo is None:
            submitted = submitted.replace(tzinfo=UTC)
        if archived_end is None or submitted is None or submitted <= archived_end:
            return RunOutcome(req.run_id, "already_archived", seq=seq)
        message = (
            f"run id {req.run_id} was reused: manifest {seq} holds another run of that id, "
            f"terminal at {_iso_z(archived_end)}, before this one was submitted "
            f"({_iso_z(submitted)}); not archived (a simulator restarted with the same "
            "--seed? point SPINE_ARCHIVE_URI at a fresh path)"
        )
        log.error("%s", message)
        return RunOutcome(req.run_id, "failed", message, seq=seq)

    def _run_entry(self, run_id: str, seq: int) -> RunEntry | None:
        for manifest in reversed(self.log.manifests):
            if manifest.seq == seq:
                return next((r for r in manifest.runs if r.run_id == run_id), None)
        return None

    async def _fetch_all(
        self, todo: list[ArchiveRequest], workdir: Path, outcomes: dict[str, RunOutcome]
    ) -> list[FetchedRun]:
        gate = asyncio.Semaphore(self.concurrency)
        async with self.client_factory() as client:
            # Checked before the first request: the archive must serve this client's Spine.
            self.spine = _spine_of_client(client)
            await asyncio.to_thread(self._check_log)

            async def one(req: ArchiveRequest) -> FetchedRun | None:
                async with gate:
                    deadline = asyncio.timeout(self.fetch_deadline)
                    try:
                        async with deadline:
                            return await self._fetch_one(client, req, workdir)
                    except NotTerminalError as exc:
                        outcomes[req.run_id] = RunOutcome(req.run_id, "not_terminal", str(exc))
                    except (TransientFetchError, SpineError) as exc:
                        outcomes[req.run_id] = RunOutcome(req.run_id, "failed", str(exc))
                    except Exception as exc:  # one hostile run must not sink its batch
                        if isinstance(exc, TimeoutError) and deadline.expired():
                            message = (
                                f"fetch deadline: not fetched within {self.fetch_deadline:g}s "
                                "(SPINE_RUN_FETCH_DEADLINE_SECONDS); left for the next attempt"
                            )
                            log.warning("run %s not archived: %s", req.run_id, message)
                        else:
                            log.exception("archiving run %s failed", req.run_id)
                            message = f"{type(exc).__name__}: {exc}"
                        outcomes[req.run_id] = RunOutcome(req.run_id, "failed", message)
                    return None

            results = await asyncio.gather(*(one(r) for r in todo))
        return [r for r in results if r is not None]

    async def _fetch_one(
        self, client: AsyncSpineClient, req: ArchiveRequest, workdir: Path
    ) -> FetchedRun:
        run = await fetch_run(client, req.run_id)
        observed = datetime.now(UTC)
        canvas_id = run.canvas_id
        dag, tasks, errors = await fetch_canvas(client, canvas_id)
        artifacts = []
        for ref in run.artifacts:
            artifacts.append(
                await download_artifact(
                    client, self.store, ref, lambda: get_lean_run(client, req.run_id), workdir
                )
            )
        return FetchedRun(
            run_id=req.run_id,
            run=raw_doc(run.response),
            dag=dag,
            tasks=tasks,
            artifacts=artifacts,
            fetch_errors=errors,
            request_name=req.request_name,
            submitted_at=req.submitted_at,
            terminal_at=terminal_time(run, req.submitted_at, observed),
        )

    def _check_log(self) -> None:
        """Before fetching anything: refuse an archive that serves another Spine than the
        client's (`SpineMismatchError`). A signing writer also makes sure the identity record
        is the log's and every witness still agrees with the log (`LogConsistencyError`
        otherwise), and checkpoints an uncheckpointed tail."""
        if self.spine is not None:
            check_store_spine(self.store, self.spine)
        if self.publisher is None:
            return
        self.publisher.spine = self.spine
        self.publisher.log_identity(self.log)
        if self.publisher.needs_checkpoint(self.log) or self.publisher.witnesses:
            self.publisher.publish(self.log)

    def _write_and_commit(
        self, fetched: list[FetchedRun], outcomes: dict[str, RunOutcome]
    ) -> Manifest | None:
        runs = list(fetched)
        draft = self._write_files(runs, new_batch_id())
        publisher = self.publisher
        identity = (
            publisher.identity() if publisher else ensure_identity(self.store, spine=self.spine)
        )
        check_spine(identity, self.spine)  # the record may have been made since _check_log
        for _ in range(COMMIT_ATTEMPTS):
            if self.before_commit is not None:
                self.before_commit(list(draft.files))
            # The commit goes after the log as this writer knows it now, which may have
            # caught up since the batch was fetched (a signing writer's checkpoint refreshes
            # it): runs those newer manifests hold must leave the draft first, or a commit
            # that wins its number outright would archive them twice.
            taken = [r for r in runs if r.run_id in self.log.committed_runs]
            if taken:
                for run in taken:
                    outcomes[run.run_id] = RunOutcome(
                        run.run_id, "already_archived", seq=self.log.committed_runs[run.run_id]
                    )
                runs = [r for r in runs if r.run_id not in self.log.committed_runs]
                if not runs:
                    return None
                draft = self._write_files(runs, new_batch_id())
            committed = self.log.commit(
                draft,
                signing_key=publisher.key if publisher else None,
                archive_id=identity.archive_id,
            )
            if committed is not None:
                for run in runs:
                    outcomes[run.run_id] = _archived(run, committed)
                if publisher is not None:
                    self.checkpoint = publisher.publish(self.log)
                return committed
            # Lost the race for this sequence number: catch up and try again (the check above
            # then drops the runs the winner committed; their old files become garbage).
            self.log.refresh()
        raise RuntimeError(f"could not commit a manifest after {COMMIT_ATTEMPTS} attempts")

    def _write_files(self, runs: list[FetchedRun], batch_id: str) -> Manifest:
        ctx = BatchContext(batch_id=batch_id, archived_at=datetime.now(UTC))
        files: list[FileEntry] = []
        for dt, tables in flatten_batch_by_dt(runs, ctx).items():
            for table, arrow in tables.items():
                encoded = encode_table(table, arrow)
                key = table_key(table, dt, batch_id)
                try:
                    self.store.put_bytes(
                        key, encoded.data, content_type="application/vnd.apache.parquet"
                    )
                except AlreadyExists:  # batch ids are unique; this is a real conflict
                    raise RuntimeError(f"refusing to overwrite {key}") from None
                files.append(FileEntry(key, table, encoded.rows, len(encoded.data), encoded.sha256))
        artifacts = [
            ArtifactEntry(run.run_id, a.artifact_id, a.sha256, a.size_bytes or 0, a.storage_uri)
            for run in runs
            for a in run.artifacts
            if a.sha256 and a.storage_uri
        ]
        return Manifest(
            seq=0,
            batch_id=batch_id,
            committed_at="",
            prev_sha256=None,
            schema_version=SCHEMA_VERSION,
            runs=tuple(
                RunEntry(
                    run_id=r.run_id,
                    status=_status(r),
                    dt=partition_dt(r),
                    terminal_at=r.terminal_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                )
                for r in runs
            ),
            files=tuple(files),
            artifacts=tuple(artifacts),
            writer={"host": socket.gethostname(), "pid": os.getpid(), "tool": "spine-pipeline"},
        )


def _status(run: FetchedRun) -> str | None:
    value = run.run.value
    status = value.get("status") if isinstance(value, dict) else None
    return status if isinstance(status, str) else None


def _archived(run: FetchedRun, manifest: Manifest) -> RunOutcome:
    value = run.run.value if isinstance(run.run.value, dict) else {}
    dag = run.dag.value if run.dag is not None and isinstance(run.dag.value, dict) else {}
    nodes = dag.get("nodes")
    edges = dag.get("edges")
    metadata = m if isinstance(m := value.get("metadata"), dict) else {}
    credits = metadata.get("credits_consumed")
    return RunOutcome(
        run_id=run.run_id,
        outcome="archived",
        status=_status(run),
        seq=manifest.seq,
        block_count=len(nodes) if isinstance(nodes, list) else 0,
        edge_count=len(edges) if isinstance(edges, list) else 0,
        task_count=count_tasks(run.tasks.value if run.tasks is not None else None),
        artifact_count=len(run.artifacts),
        artifact_errors=sum(1 for a in run.artifacts if a.download_error),
        credits=as_int(credits),
        canvas_id=value.get("canvas_id") if isinstance(value.get("canvas_id"), str) else None,
        message="; ".join(run.fetch_errors),
    )


def _spine_of_client(client: object) -> str | None:
    """The Spine a client talks to, for the identity record; None for one without a URL."""
    base_url = getattr(client, "base_url", None)
    return spine_of(base_url) if isinstance(base_url, str) else None


def _parse_utc(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _iso_z(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _dedupe(reqs: list[ArchiveRequest]) -> list[ArchiveRequest]:
    seen: set[str] = set()
    out = []
    for r in reqs:
        if r.run_id not in seen:
            seen.add(r.run_id)
            out.append(r)
    return out


def count_tasks(tree: object) -> int:
    """Tasks in a task tree as Spine reported it, counted without recursion."""
    if not isinstance(tree, dict):
        return 0
    stack = [t for part in ("completed", "not_completed") for t in _as_list(tree.get(part))]
    count = 0
    while stack:
        task = stack.pop()
        count += 1
        if isinstance(task, dict):
            stack.extend(_as_list(task.get("children")))
    return count


def _as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else []
