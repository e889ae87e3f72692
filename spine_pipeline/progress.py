"""Progress of the long commands (`audit rebuild`, `verify`, `gc`, `archive --wait`).

The libraries (`archive/`, `audit/`) report what they are doing as `Step` values through a
plain callable (`ProgressFn`) and never import rich: Dagster and tests call them with
`no_progress`, and only the CLI picks a display (`progress_display`). On a terminal that is
a rich bar per stage; anywhere else (Dagster logs, CI, a pipe) it is plain lines, a bounded
number per stage, because a log full of redrawn bars or one line per file is unreadable.
Both go to stderr, so a command's result on stdout (`--format json`) stays clean.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from spine_pipeline.archive.stores.base import printable

#: Lines a plain display prints per stage with a known total, besides the first and last:
#: one at each tenth, so a 100,000-file verify logs a dozen lines, not 100,000.
PLAIN_BUCKETS = 10
#: Between those, a stage still says where it stands this often (seconds).
PLAIN_HEARTBEAT_SECONDS = 30.0


@dataclass(frozen=True)
class Step:
    """Where a long operation stands: `done` of `total` (None: not known) in `stage`."""

    stage: str
    done: int = 0
    total: int | None = None
    detail: str = ""


ProgressFn = Callable[[Step], None]


def no_progress(step: Step) -> None:
    """The libraries' default: report nothing (Dagster, tests, library users)."""


def plain_line(step: Step) -> str:
    """`verify manifests: 3/10 manifests/000000000003.json`: one step as one safe line (a
    detail may quote what a server sent, e.g. a run's status, escape sequences and all)."""
    count = f"{step.done}/{step.total}" if step.total is not None else ""
    text = " ".join(part for part in (count, step.detail) if part)
    return printable(f"{step.stage}: {text}" if text else step.stage)


class PlainProgress:
    """One line per step, thinned per stage: the first step, each tenth of the total, the
    last (`done == total`), and otherwise one every `heartbeat` seconds (a long wait still
    shows its runs' states and time left); steps without a total (a phase) always print."""

    def __init__(
        self,
        write: Callable[[str], None],
        *,
        heartbeat: float = PLAIN_HEARTBEAT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._heartbeat = heartbeat
        self._clock = clock
        self._stage: str | None = None
        self._bucket = -1
        self._said_at = 0.0

    def __call__(self, step: Step) -> None:
        now = self._clock()
        if step.total is None or step.total <= 0:
            bucket, due = -1, True
        else:
            bucket = min(step.done, step.total) * PLAIN_BUCKETS // step.total
            due = (
                step.stage != self._stage
                or bucket > self._bucket
                or now - self._said_at >= self._heartbeat
            )
        if due:
            self._stage, self._bucket, self._said_at = step.stage, bucket, now
            self._write(plain_line(step))


class RichProgress:
    """A rich bar per stage on the terminal's stderr; a stage without a total is a spinner
    with its detail. Used only when stderr is a terminal (rich would print escape codes)."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish_phases()
        self._progress.stop()

    def _finish_phases(self) -> None:
        """A stage without a total (a phase) is over when the next stage starts: its
        spinner becomes a full bar instead of pulsing on."""
        for task in self._progress.tasks:
            if task.total is None:
                self._progress.update(task.id, total=1, completed=1)

    def __call__(self, step: Step) -> None:
        from rich.markup import escape

        description = escape(printable(f"{step.stage} {step.detail}".strip()))
        task = self._tasks.get(step.stage)
        if task is None:
            self._finish_phases()
            task = self._progress.add_task(description, total=step.total)
            self._tasks[step.stage] = task
        self._progress.update(task, description=description, completed=step.done, total=step.total)


@contextmanager
def progress_display(
    stream: TextIO | None = None, write: Callable[[str], None] | None = None
) -> Iterator[ProgressFn]:
    """The display for the CLI: rich when `stream` (default stderr) is a terminal, plain
    lines through `write` (default: to `stream`) otherwise."""
    out = stream if stream is not None else sys.stderr
    if _is_terminal(out):
        with RichProgress(out) as rich_display:
            yield rich_display
        return
    yield PlainProgress(write or (lambda line: print(line, file=out, flush=True)))


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream is no terminal
        return False
