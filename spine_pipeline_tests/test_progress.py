"""The progress display: plain lines off a terminal (bounded per stage), rich on one."""

import io

from spine_pipeline.progress import (
    PLAIN_BUCKETS,
    PlainProgress,
    RichProgress,
    Step,
    plain_line,
    progress_display,
)


def test_plain_line_shapes():
    assert plain_line(Step("verify: manifests", 3, 10, "m/3")) == "verify: manifests: 3/10 m/3"
    assert plain_line(Step("gc: reading the manifest log")) == "gc: reading the manifest log"
    assert plain_line(Step("archiving", detail="2 run(s)")) == "archiving: 2 run(s)"


def test_a_hostile_detail_is_shown_escaped_never_raw():
    lines: list[str] = []
    PlainProgress(lines.append)(Step("waiting for runs", 0, 1, "r \x1b]0;pwned\x07\u202e\nfake"))
    (line,) = lines
    assert "\x1b" not in line and "\u202e" not in line and "\n" not in line
    assert "\\x1b" in line  # shown, escaped


def test_plain_progress_prints_a_bounded_number_of_lines_per_stage():
    lines: list[str] = []
    show = PlainProgress(lines.append, clock=lambda: 0.0)
    for done in range(1001):
        show(Step("verify: manifests", done, 1000))
    # the first, one per tenth, the last: never one per item
    assert len(lines) == PLAIN_BUCKETS + 1
    assert lines[0] == "verify: manifests: 0/1000" and lines[-1] == "verify: manifests: 1000/1000"
    show(Step("verify: signatures and checkpoints"))
    show(Step("waiting for runs", 0, 1, "a running"))
    show(Step("waiting for runs", 0, 1, "a running"))  # same bucket, same stage: said
    show(Step("waiting for runs", 1, 1, "a completed"))
    assert lines[-3:] == [
        "verify: signatures and checkpoints",
        "waiting for runs: 0/1 a running",
        "waiting for runs: 1/1 a completed",
    ]


def test_a_long_stage_still_says_where_it_stands_every_heartbeat():
    lines: list[str] = []
    now = [0.0]
    show = PlainProgress(lines.append, heartbeat=30.0, clock=lambda: now[0])
    for second in range(0, 100, 2):  # a wait polled every 2 s, its run still running
        now[0] = float(second)
        show(Step("waiting for runs", 0, 1, f"a running; {second} s elapsed"))
    assert [ln.rsplit("; ", 1)[1] for ln in lines] == [
        "0 s elapsed",
        "30 s elapsed",
        "60 s elapsed",
        "90 s elapsed",
    ]


def test_steps_without_a_total_always_print():
    lines: list[str] = []
    show = PlainProgress(lines.append)
    for _ in range(3):
        show(Step("audit: mirroring the ledger"))
    assert len(lines) == 3


def test_display_is_plain_off_a_terminal_and_rich_on_one():
    pipe = io.StringIO()
    with progress_display(pipe) as show:
        assert isinstance(show, PlainProgress)
        show(Step("gc: areas", 0, 2, "scanning tables/"))
    assert pipe.getvalue() == "gc: areas: 0/2 scanning tables/\n"

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    with progress_display(tty) as show:
        assert isinstance(show, RichProgress)
        show(Step("verify: listing the archive"))  # a phase: no total
        show(Step("verify: manifests", 1, 2, "[bold]not markup[/bold]"))
        show(Step("verify: manifests", 2, 2))
        show(Step("verify: signatures and checkpoints"))
    assert "verify: manifests" in tty.getvalue() and "[bold]not markup" in tty.getvalue()
    assert all(task.finished for task in show._progress.tasks)  # no spinner left pulsing
