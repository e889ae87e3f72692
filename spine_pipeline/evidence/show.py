"""`spine-pipeline show RUN_ID`: one archived run's page, written for a quick look.

The CLI stays thin: this module loads, renders and writes; it needs no click, so the evidence
bundle can call the same functions. Dagster does not render pages: each `spine_run`
materialisation names the command that does (`show_command`), so archiving stays as cheap as
the archive and a page is rendered only when someone opens it.

The page is a copy of archived content (prompts, outputs), so it is written like every other
such output of the project (`sql --output`, `report credits --html`; docs/reliability.md):
owner-only (0600 whatever the umask), through a temporary file renamed into place (it appears
whole or not at all), never through a symlink at the path. The default directory
`./spine-show/` is created 0700 and refused if it is a symlink.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from spine_pipeline.archive.stores import open_store
from spine_pipeline.evidence.page import render_page_bytes
from spine_pipeline.evidence.run_data import load_run_data
from spine_pipeline.private_file import atomic_output

__all__ = [
    "DEFAULT_DIR",
    "FILE_MODE",
    "page_dirs",
    "page_file",
    "show_command",
    "valid_run_id",
    "write_page_file",
    "write_show_page",
]

DEFAULT_DIR = Path("spine-show")
FILE_MODE = 0o600
DIR_MODE = 0o700
#: Run ids are opaque 1-128 URL-safe characters (docs/design.md section 7): no `/`, so a run
#: id is always a plain file name.
_RUN_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")


def valid_run_id(run_id: str) -> bool:
    """Whether `run_id` is 1-128 URL-safe characters (what a run id may be)."""
    return _RUN_ID.fullmatch(run_id) is not None


def write_show_page(archive_uri: str, run_id: str, out: Path | None = None) -> Path:
    """Render `run_id` from the archive and write it to `out` (default under `./spine-show/`).

    Returns the absolute path written. `RunNotArchived`/`EvidenceError` (ValueErrors) name
    what is wrong in one line; so does a `ValueError` for a symlinked path.
    """
    if not valid_run_id(run_id):
        raise ValueError(f"not a valid run id: {run_id!r} (1-128 URL-safe characters)")
    data = load_run_data(open_store(archive_uri), run_id)
    page = render_page_bytes(data, artifact_links=False)
    if out is None:
        _ensure_dir(DEFAULT_DIR)
        out = page_file(DEFAULT_DIR, run_id)
    write_page_file(out, page)
    return out.absolute()


def page_file(directory: Path, run_id: str) -> Path:
    """The page of `run_id` in `directory`: `<run_id>.html`. The one naming rule, for the
    writers (`show`, Dagster) and for readers that link to pages (the credit report)."""
    return directory / f"{run_id}.html"


def page_dirs(archive_uri: str, dagster_home: str | None) -> list[Path]:
    """Every directory where pages of this archive's runs are written by default, without
    opening the archive: `show`'s default (`./spine-show/`), and the same name under
    `DAGSTER_HOME` or beside a local archive root (where a team may keep them)."""
    dirs = [DEFAULT_DIR.absolute()]
    if dagster_home:
        dirs.append(Path(dagster_home).absolute() / DEFAULT_DIR.name)
    if not archive_uri.lower().startswith("s3://"):
        root = Path(archive_uri.removeprefix("file://")).expanduser().resolve()
        dirs.append(root.parent / DEFAULT_DIR.name)
    return list(dict.fromkeys(dirs))


def show_command(run_id: str) -> str:
    """The command line that writes `run_id`'s page (the `page` entry of its materialisation)."""
    return f"spine-pipeline show {run_id}"


def _ensure_dir(path: Path) -> None:
    if path.is_symlink():
        raise ValueError(f"refusing to write into {path}: it is a symlink")
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=DIR_MODE)
    if not path.is_dir() or path.is_symlink():
        raise ValueError(f"refusing to write into {path}: not a directory")


def write_page_file(path: Path, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Write `data` to `path` atomically and owner-only (`private_file.atomic_output`)."""
    with atomic_output(path, mode=mode) as f:
        f.write(data)
