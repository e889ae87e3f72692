"""`spine-pipeline info`: where this installation stands, on one screen, without writing anything.

A user's first question after `make demo` (or after an alert) is "what is there, and is it
keeping up?": which archive this is, its newest manifest and checkpoint, whether the audit
database has caught up, which runs are still out, whether budgets are near, whether the
webhook receiver hears from Spine. Each answer already has a home (the identity record, the
manifest log's layout, `tlog`, the ledger's `in_flight` rule, the budget rule of
`audit/reports.py`, the webhook inbox); this module only reads them, so `info` and the
daemon cannot disagree.

Read-only and cheap by design, because it is what one runs when something is wrong:

* nothing is created: a local archive root that does not exist is reported, not made (an
  `ObjectStore` would create it), and the audit database is opened read-only, and only if
  the file exists;
* the manifest chain is not re-read: the head manifest is found by one listing and read
  alone (`verify` checks the chain); only the manifests the audit database has not ingested
  yet are read, and only when a tracked run has to be placed;
* each section fails on its own: an unreachable store, a damaged audit database or a bad
  verify key is one line in its section, and the other sections are still shown.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from spine_pipeline.archive.checkpoint import CheckpointError
from spine_pipeline.archive.identity import IdentityError, read_identity
from spine_pipeline.archive.layout import (
    MANIFEST_PREFIX,
    manifest_key,
    parse_manifest_seq,
    parse_webhook_event_key,
    tracked_run_id,
    webhook_events_day_prefix,
)
from spine_pipeline.archive.ledger import (
    Ledger,
    TrackedRun,
    decode_tracked,
    in_flight,
    in_flight_for,
    inflight_since,
    is_overdue,
)
from spine_pipeline.archive.log_status import status_keys
from spine_pipeline.archive.manifest import Manifest, ManifestError
from spine_pipeline.archive.signing import SigningError
from spine_pipeline.archive.stores import ObjectStore, StoreError, open_store, printable
from spine_pipeline.archive.tlog import archive_checkpoints, open_checkpoint, read_note
from spine_pipeline.audit.duck import AuditError, reading
from spine_pipeline.audit.refresh import normal_archive_uri
from spine_pipeline.audit.reports import Budgets, BudgetStatus, budget_status
from spine_pipeline.settings import Settings

__all__ = [
    "ArchiveInfo",
    "AuditInfo",
    "CheckpointInfo",
    "Info",
    "RunsInfo",
    "WebhookInfo",
    "gather_info",
    "render_info",
]

#: Overdue runs named on the screen; the JSON lists them all.
OVERDUE_SHOWN = 5
#: Days of inbox entries listed for the newest event (today and the two before): the inbox
#: is read by the sensor over the ledger's in-flight window, so older events act on nothing.
INBOX_DAYS = 3
#: How much of the identity record's `spine` field is shown on the screen.
SPINE_SHOWN_CHARS = 120


@dataclass(frozen=True)
class CheckpointInfo:
    """The archive's newest checkpoint; `key_ids` are those that verified it (empty when it
    was read without keys, `verified` False)."""

    key: str
    size: int
    time: datetime | None
    key_ids: tuple[str, ...]
    verified: bool
    problem: str | None = None


@dataclass
class ArchiveInfo:
    """The archive: `state` is `missing` (no local root yet), `empty` (no manifest),
    `ok`, or `error` (`problem` says why; the other fields are what was read before)."""

    uri: str
    state: str = "ok"
    problem: str | None = None
    archive_id: str | None = None
    created_at: str | None = None
    spine: Any = None  # the identity record's `spine` field, as recorded (any JSON value)
    head_seq: int = 0
    head_committed_at: str | None = None
    head_runs: int | None = None
    head_key_id: str | None = None  # the key id the head manifest says signed it
    checkpoint: CheckpointInfo | None = None

    @property
    def uncheckpointed(self) -> int | None:
        """Manifests committed after the newest checkpoint (None without one)."""
        return None if self.checkpoint is None else self.head_seq - self.checkpoint.size


@dataclass
class AuditInfo:
    """The audit database: `state` is `missing`, `ok` or `error`. `lag` is the number of
    committed manifests not ingested yet (None when the archive could not be read)."""

    db: str
    state: str = "ok"
    problem: str | None = None
    archive_uri: str | None = None
    refreshed_at: datetime | None = None
    ingested_seq: int = 0
    lag: int | None = None


@dataclass
class RunsInfo:
    """Runs in flight by the poll sensor's rule (`ledger.in_flight`), and those of them
    older than the sensor's overdue age, oldest first, with their age in hours."""

    in_flight: int = 0
    overdue: list[tuple[str, float]] = field(default_factory=list)
    oldest_hours: float | None = None
    problem: str | None = None


@dataclass
class WebhookInfo:
    """The webhook receiver's traces: the newest event in the inbox (the ledger, written by
    the receiver before it answers) and in the audit's `webhook_events`."""

    configured: bool
    inbox_last: datetime | None = None
    inbox_last_event_id: str | None = None
    audit_last: datetime | None = None
    audit_last_type: str | None = None
    audit_events: int | None = None
    problem: str | None = None


@dataclass
class Info:
    """Everything `info` shows."""

    generated_at: datetime
    archive: ArchiveInfo
    audit: AuditInfo
    runs: RunsInfo
    budgets: list[BudgetStatus] | None  # None: no audit database to count spend in
    budgets_set: bool
    webhooks: WebhookInfo

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (datetimes as ISO 8601 UTC, `Z`)."""
        doc = _jsonable(asdict(self))
        doc["archive"]["uncheckpointed"] = self.archive.uncheckpointed
        doc["runs"]["overdue"] = [{"run_id": r, "hours": h} for r, h in self.runs.overdue]
        if self.budgets is not None:
            for entry, status in zip(doc["budgets"], self.budgets, strict=True):
                entry["fraction"] = round(status.fraction, 4)
        return doc


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _line(exc: BaseException) -> str:
    """An exception as one line (store, manifest and audit errors are one line already)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------- gathering


def gather_info(
    settings: Settings | None = None,
    *,
    now: datetime | None = None,
    store: ObjectStore | None = None,
) -> Info:
    """Read every section; never raises for a missing, empty, unreachable or damaged part.

    `store` replaces the store opened from `SPINE_ARCHIVE_URI` (tests, Dagster resources).
    """
    settings = settings or Settings.from_env()
    now = now or datetime.now(UTC)
    archive, store = _read_archive(settings, store)
    audit = AuditInfo(db=str(Path(settings.audit_db).absolute()))
    runs = RunsInfo()
    webhooks = WebhookInfo(configured=bool(settings.webhook_secrets))
    budgets_set = bool(settings.credit_budget_daily or settings.credit_budget_monthly)
    budgets: list[BudgetStatus] | None = None

    tracked: list[tuple[str, str | None]] = []  # (ledger key, its text when the audit has it)
    archived: set[str] = set()
    if store is not None:
        try:
            since = inflight_since(now)
            tracked = [(k, None) for k in Ledger(store).tracked_keys(since=since)]
        except (StoreError, ValueError) as exc:
            runs.problem = f"ledger: {_line(exc)}"
            store_for_runs = None
        else:
            store_for_runs = store
    else:
        store_for_runs = None

    db = Path(settings.audit_db)
    if not db.exists() and not db.is_symlink():
        audit.state = "missing"
        audit.problem = f"no audit database yet (`spine-pipeline audit rebuild` creates {db})"
    else:
        try:
            with reading(db, stemmer=False) as con:
                _read_audit(con, audit, db, settings, archive)
                if audit.state == "ok":
                    budgets = budget_status(
                        con,
                        Budgets(settings.credit_budget_daily, settings.credit_budget_monthly),
                        now.date(),
                    )
                    tracked = _stored_texts(con, tracked)
                    archived = _archived_in_audit(con, tracked)
                    _read_audit_webhooks(con, webhooks)
        except (AuditError, duckdb.Error, OSError) as exc:
            audit.state = "error"
            audit.problem = _line(exc)
            budgets = None
    if archive.state in ("ok", "empty") and audit.state == "ok":
        audit.lag = archive.head_seq - audit.ingested_seq

    if store_for_runs is not None and runs.problem is None:
        try:
            _read_runs(store_for_runs, archive, audit, tracked, archived, runs, now)
        except (StoreError, ManifestError, ValueError) as exc:
            runs.problem = _line(exc)
    if webhooks.configured and store is not None:
        try:
            _read_inbox(store, webhooks, now)
        except (StoreError, ValueError) as exc:
            webhooks.problem = f"inbox: {_line(exc)}"
    return Info(now, archive, audit, runs, budgets, budgets_set, webhooks)


def _read_archive(
    settings: Settings, given: ObjectStore | None
) -> tuple[ArchiveInfo, ObjectStore | None]:
    """The archive section, and the store to read the ledger from (None when there is none)."""
    uri = settings.archive_uri
    info = ArchiveInfo(uri=uri)
    store = given
    if store is None:
        if not uri.lower().startswith("s3://"):
            root = Path(uri.removeprefix("file://")).expanduser()
            info.uri = str(root.absolute())
            if not root.exists():
                # Opening a local store would create the root: report it instead.
                info.state = "missing"
                info.problem = "no archive here yet (the first archived batch creates it)"
                return info, None
        try:
            store = open_store(uri)
        except (StoreError, ValueError) as exc:
            info.state, info.problem = "error", _line(exc)
            return info, None
    try:
        identity = read_identity(store)
    except IdentityError as exc:
        info.problem = _line(exc)
    except StoreError as exc:
        info.state, info.problem = "error", _line(exc)
        return info, None
    else:
        if identity is not None:
            info.archive_id, info.created_at = identity.archive_id, identity.created_at
            info.spine = identity.extra.get("spine")
    try:
        seqs = [s for i in store.list(MANIFEST_PREFIX) if (s := parse_manifest_seq(i.key))]
        info.head_seq = max(seqs, default=0)
        if not info.head_seq:
            info.state = "empty"
        else:
            key = manifest_key(info.head_seq)
            head = Manifest.from_bytes(store.get_bytes(key), key=key)
            info.head_committed_at = head.committed_at
            info.head_runs = len(head.runs)
            info.head_key_id = head.signature.key_id if head.signature else None
    except ManifestError as exc:
        info.problem = _line(exc)
    except StoreError as exc:
        info.state, info.problem = "error", _line(exc)
        return info, None
    info.checkpoint = _newest_checkpoint(store, settings, identity)
    return info, store


def _newest_checkpoint(
    store: ObjectStore, settings: Settings, identity: Any
) -> CheckpointInfo | None:
    """The archive's newest checkpoint, verified with SPINE_VERIFY_KEY (or the signing key's
    public half) when set, else read by format and origin only."""
    try:
        held = archive_checkpoints(store)
    except StoreError as exc:
        return CheckpointInfo("", 0, None, (), False, problem=_line(exc))
    if not held:
        return None
    size, key = held[-1]
    if identity is None:
        return CheckpointInfo(key, size, None, (), False, problem="no identity record")
    try:
        keys = status_keys(settings.verify_key, settings.signing_key)
    except SigningError as exc:
        return CheckpointInfo(key, size, None, (), False, problem=_line(exc))
    try:
        signed = open_checkpoint(
            read_note(store, key), origin=identity.origin, keys=keys, where=key
        )
    except (CheckpointError, StoreError) as exc:
        return CheckpointInfo(key, size, None, (), False, problem=_line(exc))
    return CheckpointInfo(
        key, signed.size, signed.checkpoint.time, signed.key_ids, verified=keys is not None
    )


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    (n,) = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name = ?",
        [name],
    ).fetchone() or (0,)
    return bool(n)


def _read_audit(
    con: duckdb.DuckDBPyConnection,
    audit: AuditInfo,
    db: Path,
    settings: Settings,
    archive: ArchiveInfo,
) -> None:
    if not _table_exists(con, "audit_state") or not _table_exists(con, "manifests"):
        audit.state, audit.problem = "error", "not an audit database (no audit_state)"
        return
    state = dict(con.execute("SELECT key, value FROM audit_state").fetchall())
    audit.archive_uri = state.get("archive_uri")
    wanted = normal_archive_uri(settings.archive_uri)
    if audit.archive_uri is not None and audit.archive_uri != wanted:
        audit.state = "error"
        audit.problem = (
            f"built from {audit.archive_uri}, not from this archive "
            "(`spine-pipeline audit rebuild`)"
        )
        return
    (seq,) = con.execute("SELECT coalesce(max(seq), 0) FROM manifests").fetchone() or (0,)
    audit.ingested_seq = int(seq)
    refreshed = state.get("refreshed_at")
    try:
        audit.refreshed_at = datetime.fromisoformat(refreshed) if refreshed else None
    except ValueError:
        audit.refreshed_at = None
    if audit.refreshed_at is None:
        # A database from before refreshes recorded their time: the snapshot is published
        # by renaming the file the refresh just wrote, so its mtime is that refresh's.
        audit.refreshed_at = datetime.fromtimestamp(os.stat(db).st_mtime, UTC)


def _stored_texts(
    con: duckdb.DuckDBPyConnection, tracked: list[tuple[str, str | None]]
) -> list[tuple[str, str | None]]:
    """Tracking records the audit mirror already holds (write-once: its text is theirs)."""
    if not tracked or not _table_exists(con, "ledger_tracked"):
        return tracked
    stored = dict(
        con.execute(
            "SELECT ledger_key, raw_json FROM ledger_tracked "
            "WHERE ledger_key IN (SELECT unnest(?::VARCHAR[]))",
            [[k for k, _ in tracked]],
        ).fetchall()
    )
    return [(k, stored.get(k)) for k, _ in tracked]


def _archived_in_audit(
    con: duckdb.DuckDBPyConnection, tracked: list[tuple[str, str | None]]
) -> set[str]:
    """Run ids among the tracked ones that the audit has ingested (so are archived)."""
    ids = sorted({tracked_run_id(k) for k, _ in tracked})
    if not ids:
        return set()
    found = con.execute(
        "SELECT DISTINCT run_id FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [ids]
    ).fetchall()
    return {r[0] for r in found}


def _read_audit_webhooks(con: duckdb.DuckDBPyConnection, webhooks: WebhookInfo) -> None:
    if not _table_exists(con, "webhook_events"):
        return
    row = con.execute(
        "SELECT count(*), max(received_at), arg_max(type, received_at) FROM webhook_events"
    ).fetchone()
    if row is not None:
        webhooks.audit_events = int(row[0])
        webhooks.audit_last, webhooks.audit_last_type = row[1], row[2]


def _read_runs(
    store: ObjectStore,
    archive: ArchiveInfo,
    audit: AuditInfo,
    tracked: list[tuple[str, str | None]],
    archived: set[str],
    runs: RunsInfo,
    now: datetime,
) -> None:
    """In-flight and overdue runs by the sensor's rules, reading as little as possible: the
    audit answers "archived?" up to the manifest it ingested; only later manifests are read."""
    records: list[TrackedRun] = []
    for key, text in tracked:
        record = decode_tracked(text if text is not None else store.get_bytes(key))
        if record is not None:
            records.append(record)
    if not records:
        return
    pending = {r.run_id for r in records} - archived
    if pending:
        start = audit.ingested_seq + 1 if audit.state == "ok" else 1
        archived |= _committed_ids(store, range(start, archive.head_seq + 1), pending)
    abandoned = Ledger(store).abandoned() if pending - archived else set()
    flying = in_flight(records, archived, abandoned)
    runs.in_flight = len(flying)
    ages = sorted((in_flight_for(t, now) for t in flying.values()), reverse=True)
    runs.oldest_hours = round(ages[0] / timedelta(hours=1), 2) if ages else None
    runs.overdue = sorted(
        (
            (run_id, round(in_flight_for(t, now) / timedelta(hours=1), 2))
            for run_id, t in flying.items()
            if is_overdue(t, now)
        ),
        key=lambda r: (-r[1], r[0]),
    )


def _committed_ids(store: ObjectStore, seqs: Iterable[int], wanted: set[str]) -> set[str]:
    """Which of `wanted` the manifests `seqs` name (newest first; stops when all are found)."""
    found: set[str] = set()
    for seq in sorted(seqs, reverse=True):
        key = manifest_key(seq)
        found |= wanted.intersection(Manifest.from_bytes(store.get_bytes(key), key=key).run_ids)
        if found == wanted:
            break
    return found


def _read_inbox(store: ObjectStore, webhooks: WebhookInfo, now: datetime) -> None:
    """The newest entry of the webhook inbox, by its key alone (receive time, event id)."""
    for back in range(INBOX_DAYS):
        day = (now - timedelta(days=back)).date()
        newest = max(
            (
                p
                for i in store.list(webhook_events_day_prefix(day))
                if (p := parse_webhook_event_key(i.key))
            ),
            default=None,
        )
        if newest is not None:
            webhooks.inbox_last = datetime.strptime(newest.received, "%Y%m%dT%H%M%S%fZ").replace(
                tzinfo=UTC
            )
            webhooks.inbox_last_event_id = newest.event_id
            return


# ----------------------------------------------------------------------------- rendering


def _ago(ts: datetime | None, now: datetime) -> str:
    if ts is None:
        return "never"
    seconds = (now - ts).total_seconds()
    if seconds < 0:
        return f"{_iso(ts)} (in the future: clock skew?)"
    if seconds < 120:
        ago = f"{seconds:.0f} s ago"
    elif seconds < 7200:
        ago = f"{seconds / 60:.0f} min ago"
    elif seconds < 172800:
        ago = f"{seconds / 3600:.1f} h ago"
    else:
        ago = f"{seconds / 86400:.1f} days ago"
    return f"{_iso(ts)} ({ago})"


def _spine_text(value: Any) -> str:
    """The identity record's `spine` field, whatever its shape, as one short safe line."""
    if isinstance(value, dict):
        parts = [f"{k}={v}" for k, v in value.items() if isinstance(v, str | int | float | bool)]
        text = ", ".join(parts) or "(recorded)"
    else:
        text = str(value)
    text = printable(text)
    return text if len(text) <= SPINE_SHOWN_CHARS else text[: SPINE_SHOWN_CHARS - 3] + "..."


def _problem(text: str | None) -> str:
    return printable(text) if text else ""


def render_info(info: Info) -> str:
    """The one screen: a heading per section, two-space indented facts."""
    now = info.generated_at
    a, d, r, w = info.archive, info.audit, info.runs, info.webhooks
    out = [f"archive     {printable(a.uri)}"]
    if a.state == "missing":
        out.append(f"  {_problem(a.problem)}")
    elif a.state == "error":
        out.append(f"  ERROR {_problem(a.problem)}")
    if a.archive_id is not None:
        ident = f"  identity  {a.archive_id}, created {printable(str(a.created_at))}"
        out.append(ident)
        if a.spine is not None:
            out.append(f"  spine     {_spine_text(a.spine)}")
    elif a.state in ("ok", "empty"):
        out.append("  identity  none yet (the first archived batch writes it)")
    if a.state == "empty":
        out.append("  head      no manifest yet: nothing archived")
    elif a.head_seq:
        signed = f", signed by key {a.head_key_id}" if a.head_key_id else ", unsigned"
        out.append(
            f"  head      manifest {a.head_seq}, committed "
            f"{printable(str(a.head_committed_at))}, {a.head_runs} run(s){signed}"
        )
    if a.state == "ok" and a.problem:
        out.append(f"  WARN      {_problem(a.problem)}")
    c = a.checkpoint
    if c is not None:
        if c.problem:
            out.append(f"  checkpoint {c.size}: WARN {_problem(c.problem)}")
        else:
            keys = (
                f"verified with key(s) {', '.join(c.key_ids)}"
                if c.verified
                else "not verified (no SPINE_VERIFY_KEY)"
            )
            after = a.uncheckpointed or 0
            tail = f"; {after} manifest(s) after it" if after else ""
            when = _iso(c.time) if c.time else "no time"
            out.append(f"  checkpoint size {c.size}, {when}, {keys}{tail}")
    elif a.state == "ok":
        out.append("  checkpoint none (unsigned archive: SPINE_SIGNING_KEY)")

    out.append(f"audit       {printable(d.db)}")
    if d.state == "ok":
        lag = (
            "lag unknown (archive not read)"
            if d.lag is None
            else "up to date"
            if d.lag == 0
            else f"{d.lag} manifest(s) not ingested yet"
            if d.lag > 0
            else f"AHEAD of the archive by {-d.lag} manifest(s) (archive rolled back?)"
        )
        out.append(f"  refreshed {_ago(d.refreshed_at, now)}")
        out.append(f"  ingested  manifest {d.ingested_seq}: {lag}")
    elif d.state == "missing":
        out.append(f"  {_problem(d.problem)}")
    else:
        out.append(f"  ERROR {_problem(d.problem)}")

    if r.problem:
        out.append(f"runs        ERROR {_problem(r.problem)}")
    elif a.state == "missing":
        out.append("runs        none tracked (no archive)")
    elif a.state == "error":
        out.append("runs        unknown (archive not read)")
    else:
        oldest = f", oldest {r.oldest_hours:.1f} h" if r.oldest_hours is not None else ""
        out.append(f"runs        {r.in_flight} in flight{oldest}, {len(r.overdue)} overdue")
        for run_id, hours in r.overdue[:OVERDUE_SHOWN]:
            out.append(f"  overdue   {printable(run_id)} ({hours:.1f} h)")
        if len(r.overdue) > OVERDUE_SHOWN:
            out.append(f"  ...       {len(r.overdue) - OVERDUE_SHOWN} more (--format json)")

    if not info.budgets_set:
        out.append("budgets     not set (SPINE_CREDIT_BUDGET_DAILY / _MONTHLY)")
    elif info.budgets is None:
        out.append("budgets     unknown: no readable audit database")
    else:
        out.append("budgets")
        for b in info.budgets:
            out.append(
                f"  {b.period:16} {b.spent:,} of {b.budget:,.0f} credits "
                f"({b.fraction:.0%}) {b.level.upper()}"
            )

    if not w.configured:
        out.append("webhooks    not configured (SPINE_WEBHOOK_SECRET unset)")
    else:
        out.append("webhooks    configured")
        inbox = (
            f"{_ago(w.inbox_last, now)} ({printable(str(w.inbox_last_event_id))})"
            if w.inbox_last
            else f"no event in the last {INBOX_DAYS} days"
        )
        out.append(f"  inbox     last event {inbox}")
        if w.audit_events is not None:
            kind = f" ({printable(str(w.audit_last_type))})" if w.audit_last_type else ""
            out.append(
                f"  audit     {w.audit_events:,} event(s), last {_ago(w.audit_last, now)}{kind}"
            )
        if w.problem:
            out.append(f"  ERROR     {_problem(w.problem)}")
    return "\n".join(out) + "\n"
