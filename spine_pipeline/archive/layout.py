"""The archive layout: every key the pipeline writes, lists or parses under an archive root.

```
<root>/
  tables/<table>/dt=YYYY-MM-DD/<batch_id>.parquet   table_key(): one file per table per dt per batch
  artifacts/sha256/<first 2 hex>/<sha256>          artifact_key(): bytes by content address
  manifests/<seq, 12 digits>.json                  manifest_key(): the commit points, a hash chain
  ledger/submissions/dt=YYYY-MM-DD/<ts>Z-<nonce>.json   submission_key(): every submit attempt
  ledger/tracked/dt=YYYY-MM-DD/<run_id>.json       tracked_key(): runs to poll and archive
  ledger/abandoned/<run_id>.json                   abandoned_key(): runs given up on
  ledger/webhooks/events/dt=YYYY-MM-DD/hour=HH/<ts>Z-<event_id>.json
                                                   webhook_event_key(): accepted deliveries
  ledger/webhooks/ids/<event_id>.json              webhook_id_key(): one claim per event id
  ledger/webhooks/runs/<run_id>/<type>.json        webhook_run_marker_key(): first event id
                                                   of a (run, type), to spot resends
  reports/credits/YYYY-MM-DD/credits-<time>.html   credit_report_key(): rendered credit reports
  archive.json                                     IDENTITY_KEY: the archive's identity record
  checkpoints/<tree size, 12 digits>.note          checkpoint_key(): signed checkpoints of the log
```

A witness (`SPINE_WITNESS_URI`, another root, ideally another account) holds
`<origin>/<tree size, 12 digits>.note` (`witness_checkpoint_key()`), where the origin is
`spine-pipeline/<archive id>`, so one witness can serve many archives.

The contract (docs/archive-format.md) that these templates encode:

- **Tables are Hive-partitioned by `dt`**, the UTC date the run became terminal (not the date
  it was archived), so a day's runs stay together however late they are archived. A batch
  writes one file per table per `dt`, named by its unique batch id.
- **Nothing is ever overwritten**: every key is written create-if-absent. A writer that finds
  a key taken reuses it (an artifact: same address, same bytes) or takes another name (a
  manifest: the next sequence number; table files: a new batch id; a credit report: a finer
  timestamp).
- **Manifests are the commit point**: a file under `tables/` or `artifacts/` that no manifest
  names does not exist for readers; `verify` reports it and `gc` removes it after a grace
  period. Manifests themselves are never collected.
- **Sequence numbers have 12 digits**, zero-padded, so key order is commit order (both stores
  list in key order) for the next trillion commits.
- **Checkpoints are outside the chain but signed**: each is a C2SP signed note over the
  Merkle root of the first `size` manifests, written create-if-absent after a commit; the
  identity record names the log (its origin), so a byte-identical copy verifies.
- The ledger and reports are outside the hash chain: they record intent and outputs, not
  archived content, and neither `verify` nor `gc` looks at them.

Why one module: the writer, the readers, `verify`, `gc`, the audit ingest and the S3
retention policy must agree on every prefix, and a template or prefix spelled twice drifts.
This module does no I/O and imports nothing from the package, so every layer may use it.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import NamedTuple

__all__ = [
    "ABANDONED_PREFIX",
    "ARTIFACT_AREA",
    "ARTIFACT_PREFIX",
    "CHAINED_PREFIXES",
    "CHECKPOINT_PREFIX",
    "CREDIT_REPORTS_PREFIX",
    "IDENTITY_KEY",
    "LEDGER_PREFIX",
    "MANIFEST_PREFIX",
    "MANIFEST_SEQ_DIGITS",
    "REPORTS_PREFIX",
    "SUBMISSIONS_PREFIX",
    "TABLE_PREFIX",
    "TEMP_PREFIX",
    "TRACKED_PREFIX",
    "WEBHOOKS_PREFIX",
    "WEBHOOK_EVENTS_PREFIX",
    "WEBHOOK_IDS_PREFIX",
    "WEBHOOK_RUNS_PREFIX",
    "TableKey",
    "WebhookEventKey",
    "abandoned_key",
    "artifact_key",
    "checkpoint_key",
    "credit_report_key",
    "key_dt",
    "manifest_key",
    "parse_abandoned_run_id",
    "parse_artifact_key",
    "parse_checkpoint_size",
    "parse_manifest_seq",
    "parse_submission_day",
    "parse_table_key",
    "parse_webhook_event_key",
    "parse_witness_size",
    "submission_key",
    "submissions_day_prefix",
    "table_key",
    "tracked_day_prefix",
    "tracked_key",
    "tracked_run_id",
    "webhook_event_key",
    "webhook_events_day_prefix",
    "webhook_events_hour_prefix",
    "webhook_id_key",
    "webhook_run_marker_key",
    "witness_checkpoint_key",
    "witness_prefix",
]

# -- committed content: tables, artifacts, manifests ---------------------------------------

TABLE_PREFIX = "tables/"
#: Everything under `artifacts/` belongs to the chain (what `verify` checks and `gc` may
#: collect); the writer only uses the content-addressed `artifacts/sha256/` below it.
ARTIFACT_AREA = "artifacts/"
ARTIFACT_PREFIX = f"{ARTIFACT_AREA}sha256/"
MANIFEST_PREFIX = "manifests/"
MANIFEST_SEQ_DIGITS = 12
#: Every object under these prefixes is named by a manifest or is garbage: `verify` reports
#: any other object there as unlisted, and `gc` collects (old) unlisted objects from the first
#: two. Manifests are never collected.
CHAINED_PREFIXES = (TABLE_PREFIX, ARTIFACT_AREA, MANIFEST_PREFIX)

# ASCII digits only: `\d` would also match other scripts' digits, which `int()` accepts, so a
# stray `manifests/<Arabic-Indic digits>.json` would pass for a real sequence number.
_DAY = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_TABLE_KEY = re.compile(rf"{re.escape(TABLE_PREFIX)}([^/]+)/dt=({_DAY})/([^/]+)\.parquet")
_KEY_DT = re.compile(rf"/dt=({_DAY})/")
_ARTIFACT_KEY = re.compile(rf"{re.escape(ARTIFACT_PREFIX)}([0-9a-f]{{2}})/([0-9a-f]{{64}})")
_MANIFEST_KEY = re.compile(rf"{re.escape(MANIFEST_PREFIX)}([0-9]{{{MANIFEST_SEQ_DIGITS}}})\.json")


class TableKey(NamedTuple):
    """The parts of a table file's key."""

    table: str
    dt: str
    batch_id: str


def _day(day: date | str) -> str:
    """`YYYY-MM-DD` of a date or datetime (taken as it is: callers pass UTC); a str is a day."""
    return day if isinstance(day, str) else f"{day:%Y-%m-%d}"


def table_key(table: str, dt: date | str, batch_id: str) -> str:
    """The file of one table, one `dt` partition (UTC terminal date), one batch."""
    return f"{TABLE_PREFIX}{table}/dt={_day(dt)}/{batch_id}.parquet"


def parse_table_key(key: str) -> TableKey | None:
    """(table, dt, batch_id) of a key `table_key` makes; None for any other key."""
    m = _TABLE_KEY.fullmatch(key)
    return TableKey(m.group(1), m.group(2), m.group(3)) if m else None


def key_dt(key: str) -> str | None:
    """The Hive partition (`YYYY-MM-DD`) of a key with a `/dt=YYYY-MM-DD/` segment, else None."""
    m = _KEY_DT.search(key)
    return m.group(1) if m else None


def artifact_key(sha256: str) -> str:
    """The content address of artifact bytes (lower-case sha256 hex)."""
    return f"{ARTIFACT_PREFIX}{sha256[:2]}/{sha256}"


def parse_artifact_key(key: str) -> str | None:
    """The sha256 of a key `artifact_key` makes; None for any other key."""
    m = _ARTIFACT_KEY.fullmatch(key)
    return m.group(2) if m and m.group(2).startswith(m.group(1)) else None


def manifest_key(seq: int) -> str:
    """The manifest of commit number `seq` (1, 2, ...)."""
    return f"{MANIFEST_PREFIX}{seq:0{MANIFEST_SEQ_DIGITS}d}.json"


def parse_manifest_seq(key: str) -> int | None:
    """The sequence number of a key `manifest_key` makes; None for any other key."""
    m = _MANIFEST_KEY.fullmatch(key)
    return int(m.group(1)) if m else None


# -- the verifiable log: identity record, checkpoints, witnesses ---------------------------

#: The archive's identity record, written once when the first manifest is committed. Its
#: archive id names the Merkle log (the checkpoint origin) and every signed manifest repeats
#: it, so the log's identity does not depend on where the archive is stored.
IDENTITY_KEY = "archive.json"
CHECKPOINT_PREFIX = "checkpoints/"
_CHECKPOINT_KEY = re.compile(
    rf"{re.escape(CHECKPOINT_PREFIX)}([0-9]{{{MANIFEST_SEQ_DIGITS}}})\.note"
)
_WITNESS_SIZE = re.compile(rf"([0-9]{{{MANIFEST_SEQ_DIGITS}}})\.note")


def checkpoint_key(size: int) -> str:
    """The signed checkpoint of the log's first `size` manifests."""
    return f"{CHECKPOINT_PREFIX}{size:0{MANIFEST_SEQ_DIGITS}d}.note"


def parse_checkpoint_size(key: str) -> int | None:
    """The tree size of a key `checkpoint_key` makes; None for any other key."""
    m = _CHECKPOINT_KEY.fullmatch(key)
    return int(m.group(1)) if m else None


def witness_prefix(origin: str) -> str:
    """Where a witness keeps the checkpoints of the log `origin` (`spine-pipeline/<id>`)."""
    return f"{origin}/"


def witness_checkpoint_key(origin: str, size: int) -> str:
    """A witnessed checkpoint of the log `origin` at tree size `size`."""
    return f"{witness_prefix(origin)}{size:0{MANIFEST_SEQ_DIGITS}d}.note"


def parse_witness_size(origin: str, key: str) -> int | None:
    """The tree size of a key `witness_checkpoint_key(origin, ...)` makes, else None."""
    prefix = witness_prefix(origin)
    if not key.startswith(prefix):
        return None
    m = _WITNESS_SIZE.fullmatch(key[len(prefix) :])
    return int(m.group(1)) if m else None


# -- the ledger: write-once intent records, outside the chain ------------------------------

LEDGER_PREFIX = "ledger/"
SUBMISSIONS_PREFIX = f"{LEDGER_PREFIX}submissions/"
TRACKED_PREFIX = f"{LEDGER_PREFIX}tracked/"
ABANDONED_PREFIX = f"{LEDGER_PREFIX}abandoned/"
_SUBMISSION_DAY = re.compile(rf"{re.escape(SUBMISSIONS_PREFIX)}dt=({_DAY})/")


def submissions_day_prefix(day: date | str) -> str:
    """The submission records of one UTC day."""
    return f"{SUBMISSIONS_PREFIX}dt={_day(day)}/"


def submission_key(ts: datetime, nonce: str) -> str:
    """One submit attempt at `ts` (UTC); `nonce` keeps attempts in the same microsecond apart."""
    return f"{submissions_day_prefix(ts)}{ts:%Y%m%dT%H%M%S%f}Z-{nonce}.json"


def parse_submission_day(key: str) -> str | None:
    """The `dt` day of a submission record's key, else None."""
    m = _SUBMISSION_DAY.match(key)
    return m.group(1) if m else None


def tracked_day_prefix(day: date | str) -> str:
    """The tracking records of one UTC day (the sensor lists only recent days)."""
    return f"{TRACKED_PREFIX}dt={_day(day)}/"


def tracked_key(day: date | str, run_id: str) -> str:
    """The tracking record of `run_id`, keyed by the day it was tracked."""
    return f"{tracked_day_prefix(day)}{run_id}.json"


def tracked_run_id(key: str) -> str:
    """The run id a tracking record's key names (its last segment without `.json`)."""
    return key.rsplit("/", 1)[-1].removesuffix(".json")


def abandoned_key(run_id: str) -> str:
    """The record of a run given up on."""
    return f"{ABANDONED_PREFIX}{run_id}.json"


def parse_abandoned_run_id(key: str) -> str | None:
    """The run id of an abandonment record's key, else None."""
    if not key.startswith(ABANDONED_PREFIX) or not key.endswith(".json"):
        return None
    return key[len(ABANDONED_PREFIX) : -len(".json")]


# -- the webhook inbox: accepted deliveries, outside the chain ------------------------------

WEBHOOKS_PREFIX = f"{LEDGER_PREFIX}webhooks/"
WEBHOOK_EVENTS_PREFIX = f"{WEBHOOKS_PREFIX}events/"
WEBHOOK_IDS_PREFIX = f"{WEBHOOKS_PREFIX}ids/"
WEBHOOK_RUNS_PREFIX = f"{WEBHOOKS_PREFIX}runs/"
_WEBHOOK_EVENT_KEY = re.compile(
    rf"{re.escape(WEBHOOK_EVENTS_PREFIX)}dt=({_DAY})/hour=([0-9]{{2}})/"
    r"([0-9]{8}T[0-9]{12}Z)-([A-Za-z0-9_-]{1,128})\.json"
)


class WebhookEventKey(NamedTuple):
    """The parts of an inbox entry's key: its UTC day, its receive time (`%Y%m%dT%H%M%S%fZ`,
    fixed width, so key order is receive order) and the event id."""

    dt: str
    received: str
    event_id: str


def webhook_events_day_prefix(day: date | str) -> str:
    """The inbox entries received on one UTC day (the audit mirror lists days)."""
    return f"{WEBHOOK_EVENTS_PREFIX}dt={_day(day)}/"


def webhook_events_hour_prefix(at: datetime) -> str:
    """The inbox entries received in one UTC hour (the sensor's reader lists hours)."""
    return f"{webhook_events_day_prefix(at)}hour={at:%H}/"


def webhook_event_key(received_at: datetime, event_id: str) -> str:
    """The inbox entry of an event received at `received_at` (UTC)."""
    return (
        f"{webhook_events_hour_prefix(received_at)}{received_at:%Y%m%dT%H%M%S%f}Z-{event_id}.json"
    )


def parse_webhook_event_key(key: str) -> WebhookEventKey | None:
    """(dt, received, event_id) of a key `webhook_event_key` makes; None for any other key,
    or one whose day, hour and time disagree."""
    m = _WEBHOOK_EVENT_KEY.fullmatch(key)
    if not m:
        return None
    day, hour, received, event_id = m.groups()
    if received[:8] != day.replace("-", "") or received[9:11] != hour:
        return None
    return WebhookEventKey(day, received, event_id)


def webhook_id_key(event_id: str) -> str:
    """The claim of an event id: created once, by the first receiver to store the event."""
    return f"{WEBHOOK_IDS_PREFIX}{event_id}.json"


def webhook_run_marker_key(run_id: str, event_type: str) -> str:
    """The first event id stored for (run, event type); a later id for the same pair is a
    resend."""
    return f"{WEBHOOK_RUNS_PREFIX}{run_id}/{event_type}.json"


# -- reports and reserved names ------------------------------------------------------------

REPORTS_PREFIX = "reports/"
CREDIT_REPORTS_PREFIX = f"{REPORTS_PREFIX}credits/"


def credit_report_key(at: datetime, *, microseconds: bool = False) -> str:
    """A credit report rendered at `at` (UTC); with `microseconds` when the second is taken."""
    time = f"{at:%H%M%S%f}" if microseconds else f"{at:%H%M%S}"
    return f"{CREDIT_REPORTS_PREFIX}{at:%Y-%m-%d}/credits-{time}.html"


#: Reserved key-segment prefix: the local store's in-flight temp files start with it, so no
#: key may, and listings skip such names.
TEMP_PREFIX = ".tmp-spine-"
