"""One writer, many readers: a reader never gets a lock error during a refresh."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from spine_pipeline.audit import connect_readonly, refresh_audit_db
from spine_pipeline.audit.snapshot import paths_for
from spine_pipeline_tests.audit.conftest import World, archive_runs, create_runs

READER = textwrap.dedent(
    """
    import sys, time
    from spine_pipeline.audit.duck import connect_readonly
    db, seconds = sys.argv[1], float(sys.argv[2])
    end = time.monotonic() + seconds
    n, last = 0, 0
    while time.monotonic() < end:
        con = connect_readonly(db)
        count = con.execute("SELECT count(*) FROM runs").fetchone()[0]
        con.execute("SELECT sum(credits) FROM credit_usage_daily").fetchone()
        con.close()
        assert count >= last, (count, last)
        last = count
        n += 1
    print(n, last)
    """
)


def test_readers_never_fail_during_refreshes(world: World, archive_copy) -> None:
    uri, db = archive_copy()
    refresh_audit_db(uri, db)
    # Prepare new batches first, so the writer's refreshes happen while readers run.
    new_ids = create_runs(world.sim, [(f"Concurrency run {i}", "report") for i in range(3)])
    # A long-held reader (a notebook) in this process, opened before any refresh.
    held = connect_readonly(db)
    held_count = held.execute("SELECT count(*) FROM runs").fetchone()[0]
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, str(db), "6"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # A long-held reader in another process: holds its snapshot across every refresh.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom spine_pipeline.audit.duck import connect_readonly\n"
            "con = connect_readonly(sys.argv[1])\nprint('ready', flush=True)\ntime.sleep(6)\n"
            "print(con.execute('SELECT count(*) FROM runs').fetchone()[0])",
            str(db),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    errors: list[BaseException] = []
    stop = threading.Event()

    def thread_reader() -> None:
        while not stop.is_set():
            try:
                con = connect_readonly(db)
                con.execute("SELECT count(*) FROM blocks").fetchone()
                con.close()
            except BaseException as exc:  # pragma: no cover - the assertion reports it
                errors.append(exc)
                return

    t = threading.Thread(target=thread_reader)
    t.start()
    modes = []
    try:
        time.sleep(0.3)
        for run_id in new_ids:
            archive_runs(world.sim, uri, [run_id])
            modes.append(refresh_audit_db(uri, db).snapshot)
            modes.append(refresh_audit_db(uri, db).snapshot)
    finally:
        stop.set()
        t.join()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    reads, _last = (int(x) for x in out.split())
    assert reads > 5
    hold_out, hold_err = holder.communicate(timeout=30)
    assert holder.returncode == 0, hold_err
    assert int(hold_out.split()[-1]) == held_count  # its snapshot never changed under it
    assert not errors, errors
    assert held.execute("SELECT count(*) FROM runs").fetchone()[0] == held_count
    held.close()
    con = connect_readonly(db)
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == held_count + 3
    con.close()
    assert set(modes) <= {"reused", "copied"}


def test_spare_is_copied_not_reused_while_someone_reads_it(world: World, archive_copy) -> None:
    uri, db = archive_copy()
    refresh_audit_db(uri, db)
    refresh_audit_db(uri, db)
    assert refresh_audit_db(uri, db).snapshot == "reused"
    old = connect_readonly(db)  # this snapshot becomes the spare after the next publish
    assert refresh_audit_db(uri, db).snapshot in ("reused", "copied")
    # Next refresh would reuse the file `old` reads: it must copy instead.
    assert refresh_audit_db(uri, db).snapshot == "copied"
    assert old.execute("SELECT count(*) FROM runs").fetchone()[0] == len(world.runs)
    old.close()
    del old
    refresh_audit_db(uri, db)
    assert refresh_audit_db(uri, db).snapshot == "reused"


def test_spare_held_by_another_process_is_not_reused(world: World, archive_copy) -> None:
    uri, db = archive_copy()
    refresh_audit_db(uri, db)
    refresh_audit_db(uri, db)
    spare = paths_for(db).spare
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\ncon = duckdb.connect(sys.argv[1], read_only=True)\n"
            "print('ready', flush=True)\ntime.sleep(3)",
            str(spare),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        assert refresh_audit_db(uri, db).snapshot == "copied"
    finally:
        holder.kill()
        holder.wait()


def test_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    from spine_pipeline.audit import AuditError

    try:
        connect_readonly(tmp_path / "nope.duckdb")
    except AuditError as exc:
        assert "audit rebuild" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AuditError")
