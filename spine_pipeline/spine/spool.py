"""Big byte strings kept in unlinked temporary files, mapped read-only, not in the heap.

A 50 MiB block is held as the response body (its JSON literal) and as its decoded UTF-8
value, and Arrow's Parquet writer copies each value once more into a page, while all of them
are alive in the table being written. In anonymous memory that is three copies resident at
once. A spooled buffer is a `mmap` of a temporary file: it is read like bytes (zero-copy for
Arrow), but its pages are the file's, so `release_resident` can take them out of the
process's resident set at any time, and a later read maps them in again from the page cache
with the same bytes. Dropping them is therefore always safe, whoever still reads the buffer;
it is only a cost when the buffer is read again. `archive.parquet` calls it between the pages
it writes, so one big value is resident at a time (plus the page Arrow builds from it).

The files are unlinked at creation (`tempfile.TemporaryFile`, in `TMPDIR`): their disk space
and page cache go when the last view of the map does. The memory moves to the page cache,
which the kernel may reclaim (clean pages) or write back (dirty ones), unlike the heap.

Each live map holds a file descriptor (Python's `mmap` keeps a duplicate), and a hostile batch
can carry thousands of big strings. So at most `MAX_MAPS` are live at once; past that a value
is kept in the heap as before (`spool` returns bytes) and a body is left where it is
(`has_room`): memory as before this module, never "too many open files".
"""

from __future__ import annotations

import mmap
import tempfile
import threading
import weakref
from collections.abc import Iterable

__all__ = ["MAX_MAPS", "Pager", "has_room", "release_resident", "spool"]

#: Most spooled maps alive at once (each holds a file descriptor); read at call time.
MAX_MAPS = 256

_Buffer = bytes | bytearray | memoryview
_LIVE: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()
_LOCK = threading.Lock()


def spool(pieces: Iterable[_Buffer]) -> mmap.mmap | bytes:
    """The concatenation of `pieces`, written to a temporary file and mapped read-only.

    Pieces are written as they come, so the whole value is never in the heap. Empty: `b""`
    (a file of no bytes cannot be mapped). With `MAX_MAPS` maps alive: the joined bytes.
    """
    if not has_room():
        return b"".join(pieces)
    with tempfile.TemporaryFile(prefix="spine-spool-") as fh:
        size = 0
        for piece in pieces:
            size += fh.write(piece)
        if size == 0:
            return b""
        fh.flush()
        mapped = mmap.mmap(fh.fileno(), size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    with _LOCK:
        _LIVE.add(mapped)
    return mapped


def has_room() -> bool:
    """Whether one more map may be made (see `MAX_MAPS`)."""
    with _LOCK:
        return len(_LIVE) < MAX_MAPS


def release_resident() -> None:
    """Take every live spooled map's pages out of this process's resident set.

    MADV_DONTNEED on a shared read-only file mapping only unmaps the pages: the next read
    faults them in again from the file, unchanged, so this never alters a byte.
    """
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None:  # pragma: no cover - platforms without madvise keep the pages
        return
    with _LOCK:
        maps = list(_LIVE)
    for mapped in maps:
        if not mapped.closed:
            mapped.madvise(advice)


class Pager:
    """While entered, a thread drops spooled pages every `interval` seconds.

    Arrow copies a big value into its data page in one `memcpy`, reading the value's pages
    as it goes; between two pages of the Parquet sink nothing can drop them. Dropped behind
    the copy, the value is resident only a few milliseconds' worth at a time instead of
    whole next to its page copy. Safe at any moment (see `release_resident`); a page dropped
    before Arrow reached it is mapped in again from the file.
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            release_resident()

    def __enter__(self) -> Pager:
        self._thread = threading.Thread(target=self._run, name="spool-pager", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        release_resident()
