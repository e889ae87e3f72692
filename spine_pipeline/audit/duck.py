"""DuckDB plumbing shared by the audit modules: extensions, the S3 secret, sandboxed readers.

Extensions cannot be downloaded on our machines, so they come from the pinned pip packages
(`duckdb-extension-httpfs`, `duckdb-extension-fts`) through one helper. Readers attach the
published database read-only inside a fresh in-memory instance: that resolves the file name
anew on every connect (so a reader always sees the latest published snapshot, which
`duckdb.connect(path)` does not guarantee inside one process because of DuckDB's instance
cache) and lets us lock the configuration after the extensions are loaded.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import duckdb

from spine_pipeline.settings import Settings

ATTACH_NAME = "audit"
LOCK_RETRY_SECONDS = 5.0
# A snapshot nobody reads stays open this long, so that calls in a row (a report, then its
# headline; a notebook's queries) do not each pay DuckDB's instance start and the attach
# of the catalog (figures in docs/decisions.md). Kept short: an idle snapshot holds its read
# lock, and the writer can only reuse a file nobody holds (it closes this process's idle
# ones itself; another process's keep the lock this long at most, after which the writer
# copies instead of reusing, which is slower but correct).
KEEP_IDLE_SECONDS = 2.0

_EXT_LOCK = threading.Lock()


class AuditError(Exception):
    """An expected audit failure (missing database, broken archive, refused SQL): one line."""


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Install `name` from its pip package (no network) and load it into `con`."""
    import duckdb_extensions

    with _EXT_LOCK:  # INSTALL copies into ~/.duckdb; two threads at once can trip on it
        try:
            con.execute(f"LOAD {name}")
            return
        except duckdb.Error:
            pass
        duckdb_extensions.import_extension(name, con=con)
        con.execute(f"LOAD {name}")


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def configure_s3(con: duckdb.DuckDBPyConnection) -> None:
    """Create a temporary S3 secret from boto3's credential chain and the S3 endpoint setting.

    The secret lives only in this connection's memory (never persisted), and its values
    are never logged or put into an error message.
    """
    import boto3

    load_extension(con, "httpfs")
    session = boto3.Session()
    creds = session.get_credentials()
    parts = ["TYPE s3"]
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        parts.append(f"KEY_ID {sql_str(frozen.access_key)}")
        parts.append(f"SECRET {sql_str(frozen.secret_key)}")
        if frozen.token:
            parts.append(f"SESSION_TOKEN {sql_str(frozen.token)}")
    settings = Settings.from_env()
    region = settings.aws_region or session.region_name or "us-east-1"
    parts.append(f"REGION {sql_str(region)}")
    endpoint = settings.s3_endpoint_url  # an http(s) URL: the settings parser checked it
    if endpoint:
        split = urlsplit(endpoint)
        parts.append(f"ENDPOINT {sql_str(split.netloc)}")
        parts.append("URL_STYLE 'path'")
        parts.append(f"USE_SSL {'true' if split.scheme == 'https' else 'false'}")
    try:
        con.execute(f"CREATE OR REPLACE TEMPORARY SECRET spine_s3 ({', '.join(parts)})")
    except duckdb.Error:
        raise AuditError("could not configure DuckDB's S3 access (httpfs secret)") from None


# ----------------------------------------------------------------------------- readers


@dataclass
class _Snapshot:
    """One published database file opened read-only, shared by this process's readers.

    Keyed by (st_dev, st_ino, stemmer): a snapshot opened with the fts extension (for
    `audit_term` in ad-hoc SQL) and one without it are separate instances of the same file.
    """

    key: tuple[int, int, bool]
    base: duckdb.DuckDBPyConnection
    path: Path
    refs: int = 0
    idle_since: float | None = None  # monotonic time the last reader let go


@dataclass
class _Registry:
    """Snapshots open in this process, by (st_dev, st_ino).

    The writer asks it before reusing an old file: POSIX record locks cannot see readers in
    the writer's own process, so this registry is how that process's readers are protected.
    """

    # Re-entrant: a finalizer (release) may run from garbage collection while it is held.
    lock: threading.RLock = field(default_factory=threading.RLock)
    open: dict[tuple[int, int, bool], _Snapshot] = field(default_factory=dict)

    def in_use(self, key: tuple[int, int]) -> bool:
        """Whether any reader of this process has the file (st_dev, st_ino) open."""
        with self.lock:
            return any(
                (snap := self.open.get((*key, stemmer))) is not None and snap.refs > 0
                for stemmer in (False, True)
            )

    reaper: threading.Thread | None = None

    def release(self, key: tuple[int, int, bool]) -> None:
        with self.lock:
            snap = self.open.get(key)
            if snap is None:
                return
            snap.refs -= 1
            if snap.refs > 0:
                return
            if KEEP_IDLE_SECONDS <= 0:
                self._close(snap)
                return
            snap.idle_since = time.monotonic()
            if self.reaper is None or not self.reaper.is_alive():
                self.reaper = threading.Thread(
                    target=self._reap, name="audit-snapshot-reaper", daemon=True
                )
                self.reaper.start()

    def _close(self, snap: _Snapshot) -> None:
        """Forget and close a snapshot nobody reads (lock held)."""
        self.open.pop(snap.key, None)
        with contextlib.suppress(duckdb.Error):
            snap.base.close()

    def close_idle(
        self,
        key: tuple[int, int] | None = None,
        *,
        path: Path | None = None,
        except_key: tuple[int, int] | None = None,
        idle_for: float = 0.0,
    ) -> None:
        """Close idle snapshots: of file `key`, or of `path` but not of file `except_key`."""
        now = time.monotonic()
        with self.lock:
            for snap in list(self.open.values()):
                if snap.refs > 0 or snap.idle_since is None or now - snap.idle_since < idle_for:
                    continue
                if key is not None and snap.key[:2] != key:
                    continue
                if path is not None and (snap.path != path or snap.key[:2] == except_key):
                    continue
                self._close(snap)

    def _reap(self) -> None:
        """Close snapshots idle for KEEP_IDLE_SECONDS; stop when none is left idle."""
        while True:
            time.sleep(max(KEEP_IDLE_SECONDS / 2, 0.05))
            self.close_idle(idle_for=KEEP_IDLE_SECONDS)
            with self.lock:
                if not any(s.refs <= 0 for s in self.open.values()):
                    self.reaper = None
                    return


REGISTRY = _Registry()


def _refuse_planted(path: Path) -> None:
    """A published database that is a symlink (or not a regular file) was planted: the
    writer never makes one, and answers read through it would pass for the audit tables."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # reported as "does not exist yet" below
    if not stat.S_ISREG(st.st_mode):
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise AuditError(
            f"refusing to read {path}: it is {what}, which the audit writer never creates "
            "(planted?); remove it and run `spine-pipeline audit rebuild`"
        )


def file_key(path: str | os.PathLike[str]) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def _open_snapshot(path: Path, stemmer: bool) -> _Snapshot:
    """A fresh instance holding `path` read-only, sandboxed before any query runs.

    Nothing a reader does reaches the disk or outlives its cursor: no temporary directory
    (DuckDB's default is `.tmp` under the working directory, where it would spill) but a
    memory limit instead (`SPINE_AUDIT_MEMORY_LIMIT`, read when the snapshot opens); no
    extension installed or loaded on demand; the instance's own in-memory catalog, writable
    and shared by every cursor of the snapshot, detached; then no file or URL access and
    the configuration locked, so a query cannot turn any of this back.
    """
    memory_limit = Settings.from_env().audit_memory_limit
    base = duckdb.connect(":memory:")
    try:
        base.execute("SET temp_directory = ''")
        base.execute(f"SET memory_limit = '{int(memory_limit)}B'")
        base.execute("SET TimeZone = 'UTC'")
        if stemmer:  # `audit_term` needs the stemmer; loaded only then (it costs each open)
            load_extension(base, "fts")
        base.execute("SET autoinstall_known_extensions = false")
        base.execute("SET autoload_known_extensions = false")
        base.execute(f"ATTACH {sql_str(str(path))} AS {ATTACH_NAME} (READ_ONLY)")
        base.execute(f"USE {ATTACH_NAME}")
        base.execute("DETACH memory")
        base.execute("SET enable_external_access = false")
        base.execute("SET lock_configuration = true")
    except BaseException:
        base.close()
        raise
    return _Snapshot(key=(0, 0, stemmer), base=base, path=path)


def _is_lock_error(exc: duckdb.Error) -> bool:
    text = str(exc)
    return "lock" in text.lower() and ("Conflicting" in text or "Could not set" in text)


def connect_readonly(
    db_path: str | os.PathLike[str],
    *,
    wait_seconds: float = LOCK_RETRY_SECONDS,
    stemmer: bool = True,
) -> duckdb.DuckDBPyConnection:
    """A sandboxed read-only connection to the latest published audit snapshot.

    It never writes, cannot read files or URLs, and cannot change its own settings. A
    refresh publishing meanwhile does not disturb it: it keeps reading the snapshot it
    opened. A lock conflict (only possible in a microsecond race with a publish) is retried
    for `wait_seconds` against the newly published file. `stemmer=False` skips loading the
    fts extension (the `audit_term` macro then fails): the library's reports and search do
    not need it in the reader, and it is most of the cost of opening a snapshot.
    """
    path = Path(db_path).absolute()
    deadline = time.monotonic() + wait_seconds
    while True:
        _refuse_planted(path)
        try:
            key = (*file_key(path), stemmer)
        except FileNotFoundError:
            raise AuditError(
                f"audit database {path} does not exist yet; run `spine-pipeline audit rebuild`"
            ) from None
        # An idle snapshot of a file that is no longer the published one only holds a lock.
        REGISTRY.close_idle(path=path, except_key=key[:2])
        with REGISTRY.lock:
            snap = REGISTRY.open.get(key)
            if snap is not None:
                snap.refs += 1
                snap.idle_since = None
                return _cursor(snap)
        try:
            fresh = _open_snapshot(path, stemmer)
        except duckdb.Error as exc:
            if _is_lock_error(exc) and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise
        try:
            same = (*file_key(path), stemmer) == key
        except FileNotFoundError:
            same = False
        if not same:  # a publish happened between stat and attach: attach the new file
            fresh.base.close()
            continue
        fresh.key = key
        with REGISTRY.lock:
            existing = REGISTRY.open.get(key)
            if existing is not None:  # another thread won: use its snapshot
                fresh.base.close()
                fresh = existing
            else:
                REGISTRY.open[key] = fresh
            fresh.refs += 1
            fresh.idle_since = None
            return _cursor(fresh)


def _cursor(snap: _Snapshot) -> duckdb.DuckDBPyConnection:
    """A connection on the shared snapshot; when the last one is gone the snapshot stays
    open for KEEP_IDLE_SECONDS, then closes."""
    try:
        cur = snap.base.cursor()
        cur.execute(f"USE {ATTACH_NAME}")
    except BaseException:
        # Called with REGISTRY.lock held: undo the reference without re-locking.
        snap.refs -= 1
        raise
    weakref.finalize(cur, REGISTRY.release, snap.key)
    return cur


@contextmanager
def reading(
    db_path: str | os.PathLike[str], *, stemmer: bool = True
) -> Iterator[duckdb.DuckDBPyConnection]:
    """`with reading(db) as con:` closes the connection (and maybe the snapshot) after use."""
    con = connect_readonly(db_path, stemmer=stemmer)
    try:
        yield con
    finally:
        con.close()
