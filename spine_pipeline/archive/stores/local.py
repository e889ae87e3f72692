"""Local-disk backend of the archive's object store.

Why it is built the way it is:
- **No overwrite, ever**: an object is written to a temp file in its final directory, fsynced,
  then published with `link(2)`, which is atomic and fails if the name exists (`rename(2)` would
  silently replace it). The directory is fsynced after publishing, so a committed write survives
  a power loss.
- **Exposure rule**: directories this store creates are `0700` and files `0600`, set explicitly
  (`fchmod`) so the process umask cannot widen them: the archive holds agent outputs that may be
  confidential. An existing root keeps the mode its owner gave it.
- **No escape from the root**: every path is walked one segment at a time from an fd of the root
  with `O_NOFOLLOW`, so no symlink inside the archive is ever followed (symlinks are refused, even
  ones pointing inside the root); `url()` additionally resolves the path it hands to readers and
  checks it is inside the root.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from spine_pipeline.archive.stores.base import (
    TEMP_PREFIX,
    AlreadyExists,
    ObjectInfo,
    ObjectNotFound,
    RefusedEntry,
    StoreError,
    UntrustedObject,
    printable,
    validate_key,
    validate_prefix,
    validate_sha256_hex,
)

__all__ = ["DIR_MODE", "FILE_MODE", "LocalStore"]

DIR_MODE = 0o700
FILE_MODE = 0o600
_COPY_CHUNK = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


class LocalStore:
    """An archive root on local disk (see the module docstring for the guarantees)."""

    def __init__(self, uri: str | os.PathLike[str]) -> None:
        text = os.fspath(uri)
        if text.startswith("file://"):
            text = text[len("file://") :]
        if text == "":
            raise ValueError("archive path is empty")
        root = Path(text).expanduser()
        _make_root(root)
        self.root = root.resolve(strict=True)
        self.uri = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({self.uri!r})"

    # -- writes ---------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        """Create `key` holding `data` (content_type is not stored locally)."""
        validate_key(key)
        view = memoryview(data)

        def write(fd: int) -> None:
            offset = 0
            while offset < len(view):
                offset += os.write(fd, view[offset : offset + _COPY_CHUNK])

        self._publish(key, write)

    def put_file(
        self, key: str, path: Path, *, sha256_hex: str, content_type: str | None = None
    ) -> None:
        """Create `key` from `path`, copied in 1 MiB chunks and hashed on the way.

        The copy is published only if it hashes to `sha256_hex`, so a file that changed after it
        was hashed never enters the archive under the wrong content address.
        """
        validate_key(key)
        expected = validate_sha256_hex(sha256_hex)
        try:
            source = open(path, "rb")  # noqa: SIM115 - closed in the finally below
        except OSError as exc:
            raise StoreError(f"cannot read {os.fspath(path)!r}: {_reason(exc)}") from None
        try:

            def write(fd: int) -> None:
                digest = hashlib.sha256()
                while chunk := source.read(_COPY_CHUNK):
                    digest.update(chunk)
                    view = memoryview(chunk)
                    offset = 0
                    while offset < len(view):
                        offset += os.write(fd, view[offset:])
                if digest.hexdigest() != expected:
                    raise StoreError(
                        f"cannot store {key}: {os.fspath(path)!r} does not hash to the given sha256"
                    )

            self._publish(key, write)
        finally:
            source.close()

    def _publish(self, key: str, write: Callable[[int], None]) -> None:
        """Write a temp file next to the target, fsync, then link it into place (no replace)."""
        *dirs, name = key.split("/")
        dir_fd = self._open_dir(dirs, key, create=True)
        assert dir_fd is not None
        tmp = f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            try:
                fd = os.open(
                    tmp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    FILE_MODE,
                    dir_fd=dir_fd,
                )
            except OSError as exc:
                raise StoreError(f"cannot write {key}: {_reason(exc)}") from None
            try:
                try:
                    os.fchmod(fd, FILE_MODE)
                    write(fd)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                try:
                    os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
                except FileExistsError:
                    raise AlreadyExists(key) from None
            except OSError as exc:
                raise StoreError(f"cannot write {key}: {_reason(exc)}") from None
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def delete(self, key: str) -> None:
        """Remove `key` if present; a missing key is not an error (GC may race itself)."""
        validate_key(key)
        *dirs, name = key.split("/")
        dir_fd = self._open_dir(dirs, key, create=False)
        if dir_fd is None:
            return
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise UntrustedObject(f"refusing to delete {key}: not a regular file")
            os.unlink(name, dir_fd=dir_fd)
            os.fsync(dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot delete {key}: {_reason(exc)}") from None
        finally:
            os.close(dir_fd)

    # -- reads ----------------------------------------------------------------------------

    def open_read(self, key: str) -> BinaryIO:
        """A buffered reader over the file; symlinks are refused."""
        validate_key(key)
        *dirs, name = key.split("/")
        dir_fd = self._open_dir(dirs, key, create=False)
        if dir_fd is None:
            raise ObjectNotFound(f"no such object: {key}")
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            raise ObjectNotFound(f"no such object: {key}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UntrustedObject(f"refusing to read {key}: it is a symlink") from None
            raise StoreError(f"cannot read {key}: {_reason(exc)}") from None
        finally:
            os.close(dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ObjectNotFound(f"no such object: {key} (not a regular file)")
        return os.fdopen(fd, "rb")

    def get_bytes(self, key: str) -> bytes:
        """The whole object."""
        with self.open_read(key) as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        """Whether a regular file exists under `key`; a symlink there is refused."""
        validate_key(key)
        *dirs, name = key.split("/")
        dir_fd = self._open_dir(dirs, key, create=False)
        if dir_fd is None:
            return False
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot check {key}: {_reason(exc)}") from None
        finally:
            os.close(dir_fd)
        if stat.S_ISLNK(st.st_mode):
            raise UntrustedObject(f"refusing {key}: it is a symlink")
        return stat.S_ISREG(st.st_mode)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Regular files whose key starts with `prefix`, in key order (UTF-8 byte order, as S3).

        Symlinks, other non-regular entries and names no writer makes are not listed (see
        `refused`); in-flight temp files neither. A symlink on the prefix's own path raises
        `UntrustedObject` (on first `next()`), as any read through it does.
        """
        validate_prefix(prefix)  # here, not on first next(): a bad prefix fails at the call
        *dirs, partial = prefix.split("/")
        return (e for e in self._list(dirs, partial, prefix) if isinstance(e, ObjectInfo))

    def refused(self, prefix: str = "") -> Iterator[RefusedEntry]:
        """Entries under `prefix` that `list` skips: symlinks (never followed, so nothing
        below a symlinked directory), fifos, sockets, devices, and names that are not valid
        keys. In key order."""
        validate_prefix(prefix)
        *dirs, partial = prefix.split("/")
        return self._refused(dirs, partial, prefix)

    def _refused(self, dirs: Sequence[str], partial: str, prefix: str) -> Iterator[RefusedEntry]:
        try:
            entries = self._list(dirs, partial, prefix)
            for entry in entries:
                if isinstance(entry, RefusedEntry):
                    yield entry
        except UntrustedObject:
            yield RefusedEntry(printable(prefix), "a symlink or non-directory on its path")

    def _list(
        self, dirs: Sequence[str], partial: str, prefix: str
    ) -> Iterator[ObjectInfo | RefusedEntry]:
        dir_fd = self._open_dir(dirs, prefix, create=False)
        if dir_fd is None:
            return
        base = "".join(f"{d}/" for d in dirs)
        yield from self._walk(dir_fd, base, partial)

    def _walk(self, dir_fd: int, base: str, partial: str) -> Iterator[ObjectInfo | RefusedEntry]:
        """Depth-first walk in key order; takes ownership of `dir_fd`."""
        try:
            entries = []
            with os.scandir(dir_fd) as it:
                for entry in it:
                    name = entry.name
                    if not name.startswith(partial) or name.startswith(TEMP_PREFIX):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        entries.append((name + "/", name, True))
                    else:
                        entries.append((name, name, False))
            # A directory sorts as "name/" so that "a-b" < "a/x" < "a0", exactly as flat keys do.
            entries.sort(key=lambda e: e[0].encode("utf-8", "surrogateescape"))
            for _, name, is_dir in entries:
                key = f"{base}{name}"
                try:
                    validate_key(key)
                except ValueError:
                    yield RefusedEntry(printable(key), "not a name the archive writes")
                    continue
                if is_dir:
                    try:
                        sub_fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                    except OSError:
                        continue  # removed or replaced since scandir: not an object
                    yield from self._walk(sub_fd, f"{key}/", "")
                    continue
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISLNK(st.st_mode):
                    yield RefusedEntry(printable(key), "symlink (never followed)")
                    continue
                if not stat.S_ISREG(st.st_mode):
                    yield RefusedEntry(printable(key), "not a regular file")
                    continue
                yield ObjectInfo(
                    key=key,
                    size=st.st_size,
                    last_modified=datetime.fromtimestamp(st.st_mtime, tz=UTC),
                )
        except OSError as exc:
            raise StoreError(f"cannot list {printable(base) or '/'}: {_reason(exc)}") from None
        finally:
            os.close(dir_fd)

    def url(self, key: str) -> str:
        """The absolute path of `key`, checked to resolve inside the root (no symlink on it)."""
        validate_key(key)
        path = self.root.joinpath(*key.split("/"))
        resolved = Path(os.path.realpath(path))
        if resolved != path or not resolved.is_relative_to(self.root):
            raise StoreError(f"refusing {key}: it resolves outside the archive root")
        return str(path)

    # -- paths ----------------------------------------------------------------------------

    def _open_dir(self, dirs: Sequence[str], key: str, *, create: bool) -> int | None:
        """An fd of the directory holding `key`, walked without following any symlink.

        Returns None if a directory is missing and `create` is false. Directories created here
        get mode 0700 whatever the umask.
        """
        try:
            fd = os.open(self.root, _DIR_FLAGS)
        except OSError as exc:
            raise StoreError(f"cannot open archive root {self.uri}: {_reason(exc)}") from None
        try:
            for segment in dirs:
                try:
                    next_fd = os.open(segment, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    next_fd = self._mkdir(fd, segment, key)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _not_a_plain_dir(key, segment) from None
                    raise StoreError(f"cannot open directory for {key}: {_reason(exc)}") from None
                os.close(fd)
                fd = next_fd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _mkdir(self, parent_fd: int, segment: str, key: str) -> int:
        created = False
        try:
            os.mkdir(segment, DIR_MODE, dir_fd=parent_fd)
            created = True
        except FileExistsError:
            pass  # a concurrent writer made it
        except OSError as exc:
            raise StoreError(f"cannot create directory for {key}: {_reason(exc)}") from None
        try:
            fd = os.open(segment, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _not_a_plain_dir(key, segment) from None
            raise StoreError(f"cannot open directory for {key}: {_reason(exc)}") from None
        if created:
            os.fchmod(fd, DIR_MODE)
            os.fsync(parent_fd)
        return fd


def _not_a_plain_dir(key: str, segment: str) -> UntrustedObject:
    return UntrustedObject(
        f"refusing {key}: {segment!r} on its path is a symlink or not a directory"
    )


def _make_root(root: Path) -> None:
    """Create the root and any missing parents with mode 0700 (existing ones are left alone)."""
    missing: list[Path] = []
    probe = root.absolute()
    while not probe.exists():
        if probe.is_symlink():
            raise StoreError(f"archive root {str(root)!r}: dangling symlink on its path")
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot create archive root {str(root)!r}: {_reason(exc)}") from None
        else:
            os.chmod(path, DIR_MODE)
    if not root.is_dir():
        raise StoreError(f"archive root {str(root)!r} is not a directory")
