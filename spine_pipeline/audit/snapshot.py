"""Publishing the audit database as immutable snapshots (one writer, many readers).

DuckDB locks its file: a read-write connection excludes every reader in other processes,
and a reader (a notebook left open) excludes the writer. So readers never open the file the
writer writes. The writer works on a *spare* file beside the published one and publishes it
with an atomic rename; readers that attached the old file keep reading it.

Two files alternate (blue/green), so a refresh does not copy the whole database:

- `audit.duckdb`          the published snapshot; nobody ever writes it again.
- `audit.duckdb.spare`    the previous snapshot. The next refresh catches it up (ingests
                          the manifests it is missing) and publishes it.

The spare is reused only when nothing reads it: no reader of this process (the registry in
`duck.py`) and no POSIX lock from any process (an open-file-description write-lock probe,
which also sees the record locks DuckDB readers of this process hold). Otherwise, and on
platforms without OFD locks, the published file is copied to a new spare (slow path). It is
also copied when the previous refresh added much to a small database (`copy_is_cheaper`):
re-ingesting that would cost more than the copy.

No name beside the database is ever followed: a symlink (or any non-regular entry) planted
at the published, spare, WAL, link, copy or lock name would make the writer overwrite a
foreign file, or publish one, so a refresh refuses with a clear error and touches nothing.
Every open of these names uses `O_NOFOLLOW`, the copy is created with `O_EXCL`, and a spare
with a second hard link is never reused (writing it would write the other name's file).
DuckDB opens the spare by name, so a symlink swapped in between the check and its open
cannot be excluded; `publish` checks again and refuses to publish anything but a plain
private file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from spine_pipeline.audit.duck import REGISTRY, AuditError, file_key

WRITER_WAIT_SECONDS = 600.0


@dataclass(frozen=True)
class Paths:
    """The files of one audit database."""

    published: Path

    @property
    def spare(self) -> Path:
        return self.published.with_name(f"{self.published.name}.spare")

    @property
    def previous_link(self) -> Path:
        return self.published.with_name(f"{self.published.name}.prev")

    @property
    def writer_lock(self) -> Path:
        return self.published.with_name(f"{self.published.name}.lock")

    @property
    def copying(self) -> Path:
        return self.published.with_name(f"{self.published.name}.copy")

    def beside(self) -> tuple[Path, ...]:
        """Every name the writer opens, creates, renames or removes beside the database."""
        wal = (Path(f"{self.published}.wal"), Path(f"{self.spare}.wal"))
        return (self.published, self.spare, self.previous_link, self.copying, *wal)


def paths_for(db_path: str | os.PathLike[str]) -> Paths:
    """The files of the database at `db_path` (its directory may be reached through symlinks;
    the names beside it may not be symlinks, see `refuse_planted`)."""
    return Paths(Path(db_path).absolute())


_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def _planted(path: Path, st: os.stat_result) -> AuditError:
    what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
    return AuditError(
        f"refusing to use {path}: it is {what}, which the audit writer never follows or "
        "creates (planted?); nothing was written: remove it and run the refresh again"
    )


def refuse_planted(paths: Paths) -> None:
    """Raise `AuditError` if any name beside the database is a symlink or not a regular file."""
    for path in (*paths.beside(), paths.writer_lock):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            raise _planted(path, st)


@contextlib.contextmanager
def writer_lock(paths: Paths, wait_seconds: float = WRITER_WAIT_SECONDS) -> Iterator[None]:
    """Serialise writers (CLI, Dagster asset, tests) across processes: one refresh at a time."""
    _private_parents(paths.published.parent)
    try:
        fd = os.open(paths.writer_lock, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _planted(paths.writer_lock, os.lstat(paths.writer_lock)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _planted(paths.writer_lock, st)
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise AuditError(
                        f"another refresh of {paths.published} is still running "
                        f"(waited {wait_seconds:.0f} s)"
                    ) from None
                time.sleep(0.1)
        refuse_planted(paths)  # before anything reads or writes a name beside the database
        yield
    finally:
        os.close(fd)  # releases the flock


def _private_parents(directory: Path) -> None:
    """Create missing directories owner-only (0700, whatever the umask); leave existing ones."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
            d.chmod(0o700)


def _remove(path: Path) -> None:
    for p in (path, Path(f"{path}.wal")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def nobody_reads(path: Path) -> bool:
    """True only if provably no reader has `path` open (in this process or any other)."""
    try:
        key = file_key(path)
    except FileNotFoundError:
        return False
    REGISTRY.close_idle(key)  # this process's idle snapshots would hold the lock
    if REGISTRY.in_use(key):
        return False
    setlk = getattr(fcntl, "F_OFD_SETLK", None)
    if setlk is None:  # no OFD locks (not Linux): cannot prove it, so do not reuse
        return False
    fd = os.open(path, os.O_RDWR | _NOFOLLOW)
    try:
        # struct flock: l_type, l_whence, l_start, l_len (0 = whole file), l_pid.
        request = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        try:
            fcntl.fcntl(fd, setlk, request)
        except OSError:
            return False
        return True
    finally:
        # An OFD lock belongs to this open file description: closing it releases it. The
        # probe only succeeded if no record lock existed, so closing drops nobody else's.
        os.close(fd)


#: Copy the published file instead of reusing the spare when the previous refresh grew the
#: database by more than this fraction of its size, and by at least COPY_MIN_GROWTH bytes.
COPY_GROWTH_FRACTION = 0.1
COPY_MIN_GROWTH = 16 << 20


def copy_is_cheaper(published_bytes: int, spare_bytes: int) -> bool:
    """Whether copying the published file beats catching the spare up.

    The spare lacks what the previous refresh ingested, and catching up re-ingests it (verify,
    insert, index): the cost grows with what that refresh added, while a copy (sendfile)
    grows with the whole file and is far cheaper per byte. After a big refresh of a small
    database (a burst, ingested while its batches run) the copy wins; on a large database
    refreshed a batch at a time the catch-up does (docs/benchmarks.md, "Burst").
    """
    growth = published_bytes - spare_bytes
    return growth >= COPY_MIN_GROWTH and growth > COPY_GROWTH_FRACTION * published_bytes


def prepare_spare(paths: Paths, *, fresh: bool) -> tuple[Path, str]:
    """Make the spare file ready to be written; return it and how it was made.

    `fresh` (a rebuild) starts from an empty file. Otherwise the spare is reused when it is
    an older snapshot nobody reads and catching it up costs less than a copy
    (`copy_is_cheaper`), else the published file is copied (atomically named).
    """
    refuse_planted(paths)
    _remove(paths.copying)
    _remove(paths.previous_link)
    spare = paths.spare
    if fresh or not paths.published.exists():
        _remove(spare)
        return spare, "new"
    if (
        spare.exists()
        and not os.path.lexists(f"{spare}.wal")
        and os.lstat(spare).st_nlink == 1  # a second name would be written through too
        and file_key(spare) != file_key(paths.published)
        and not copy_is_cheaper(os.stat(paths.published).st_size, os.stat(spare).st_size)
        and nobody_reads(spare)
    ):
        return spare, "reused"
    _remove(spare)
    _copy_private(paths.published, paths.copying)
    os.replace(paths.copying, spare)
    return spare, "copied"


def _copy_private(source: Path, target: Path) -> None:
    """Copy `source` to a new owner-only `target`; neither name is followed if a symlink."""
    src = os.open(source, os.O_RDONLY | _NOFOLLOW)
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise _planted(source, st)
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
        try:
            _copy_fds(src, dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_fds(src: int, dst: int) -> None:
    """sendfile(2) in the kernel where it can copy between files (Linux), else 1 MiB chunks."""
    offset = 0
    try:
        while sent := os.sendfile(dst, src, offset, 1 << 30):
            offset += sent
        return
    except OSError as exc:
        if offset or exc.errno not in (
            errno.EINVAL,
            errno.ENOSYS,
            errno.ENOTSOCK,
            errno.EOPNOTSUPP,
        ):
            raise
    with open(src, "rb", closefd=False) as fsrc, open(dst, "wb", closefd=False) as fdst:
        shutil.copyfileobj(fsrc, fdst, 1 << 20)


def publish(paths: Paths) -> None:
    """Atomically make the (closed, checkpointed) spare the published snapshot.

    The previous snapshot keeps a name (the new spare) so the next refresh can catch it up
    instead of copying. A crash between the steps leaves at worst a stray link that the
    next refresh removes; the published name always points to a complete database.
    """
    refuse_planted(paths)
    spare = paths.spare
    if os.path.lexists(f"{spare}.wal"):
        raise AuditError(f"{spare}.wal exists: the new snapshot was not checkpointed")
    fd = os.open(spare, os.O_RDONLY | _NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise AuditError(
                f"refusing to publish {spare}: not a plain file with one name (planted?)"
            )
        os.fchmod(fd, 0o600)  # a full copy of the archived content: owner only, any umask
    finally:
        os.close(fd)
    if paths.published.exists():
        _remove(paths.previous_link)
        os.link(paths.published, paths.previous_link, follow_symlinks=False)
        os.replace(spare, paths.published)
        os.replace(paths.previous_link, spare)
    else:
        os.replace(spare, paths.published)
    _fsync_dir(paths.published.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
