"""Write a file the way every copy of archived content is written: atomically, owner-only.

Query results, reports and run pages are copies of the archive's content, so they get the
owner only whatever the umask. A symlink at the target is refused rather than followed (a
planted link must not redirect the write); the final rename replaces a link, never writes
through it. A failed or interrupted write leaves neither a partial file nor the temporary
one. One home for this, so the CLI's outputs and the evidence pages cannot drift apart.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["PRIVATE_FILE_MODE", "atomic_output"]

PRIVATE_FILE_MODE = 0o600


@contextlib.contextmanager
def atomic_output(path: Path, *, mode: int = PRIVATE_FILE_MODE) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` when the block completes: a temp file beside it
    (O_EXCL|O_NOFOLLOW), `mode` set with fchmod, fsynced, then renamed over `path`.

    `ValueError` when `path` is a symlink.
    """
    if path.is_symlink():
        raise ValueError(f"refusing to write {path}: it is a symlink")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            fd = -1
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
