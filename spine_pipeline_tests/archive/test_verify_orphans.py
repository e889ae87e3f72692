"""`verify` does not cry wolf (issue 14, docs/contracts.md section 7 "verify exit codes").

A normal writer race leaves the losing writer's files uncommitted until `gc` runs hours
later. They are one `WARN` line each and exit 0; a changed byte in anything committed is
still exit 1. On both backends.
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner, Result

from spine_pipeline.archive.layout import TABLE_PREFIX, artifact_key
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.verify import verify_archive
from spine_pipeline.cli import main
from spine_pipeline_tests.archive.conftest import ArchiveKit
from spine_pipeline_tests.fixtures.insider import plant


@pytest.fixture
def verify_cli(kit: ArchiveKit, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("SPINE_API_KEY", kit.sim.api_key)
    monkeypatch.setenv("SPINE_BASE_URL", kit.sim.base_url)
    monkeypatch.setenv("SPINE_ARCHIVE_URI", kit.uri)

    def run() -> Result:
        return CliRunner().invoke(main, ["verify"], catch_exceptions=False)

    return run


def _lose_a_race(kit: ArchiveKit) -> None:
    """Writer A writes its files; writer B commits the same run first; A's files are orphans."""
    shared = kit.submit("[scenario:completed] contested run", template="report")
    own = kit.submit("[scenario:completed] A's own run")
    state = {"raced": False}

    def other_writer_commits_first(files: Any) -> None:
        if not state["raced"]:
            state["raced"] = True
            kit.archiver().archive(shared)

    result = kit.archiver(before_commit=other_writer_commits_first).archive(shared + own)
    assert {o.outcome for o in result.outcomes} == {"already_archived", "archived"}


def _flip_a_byte(kit: ArchiveKit, key: str) -> None:
    data = bytearray(kit.store.get_bytes(key))
    data[len(data) // 2] ^= 0x01
    plant(kit.uri, key, bytes(data))


def test_a_losing_writers_orphans_alone_pass_with_one_warn_line_each(
    kit: ArchiveKit, verify_cli: Any
) -> None:
    _lose_a_race(kit)
    orphan_artifact = artifact_key("ab" * 32)  # a crashed writer's artifact, never committed
    kit.store.put_bytes(orphan_artifact, b"bytes whose address was never committed")

    report = verify_archive(kit.store)
    assert report.ok, [str(p) for p in report.problems]  # demo and soak keep their meaning
    orphans = [w.key for w in report.warnings]
    assert orphans and all(w.kind == "unlisted" for w in report.warnings)
    assert orphan_artifact in orphans
    assert all(k.startswith(TABLE_PREFIX) for k in orphans if k != orphan_artifact)

    result = verify_cli()
    assert result.exit_code == 0, result.output
    warn_lines = [line for line in result.stderr.splitlines() if line.startswith("WARN ")]
    assert len(warn_lines) == len(orphans)
    for key in orphans:
        assert sum(key in line for line in warn_lines) == 1
    assert "FAIL" not in result.stderr
    assert result.stdout.strip().endswith(f"OK with {len(orphans)} warning(s)")


def test_a_changed_byte_in_a_committed_file_still_fails(kit: ArchiveKit, verify_cli: Any) -> None:
    _lose_a_race(kit)
    log = ManifestLog(kit.store)
    log.refresh()
    victim = log.manifests[-1].files[0].key
    _flip_a_byte(kit, victim)

    result = verify_cli()
    assert result.exit_code == 1
    fail_lines = [line for line in result.stderr.splitlines() if line.startswith("FAIL ")]
    assert fail_lines and all(victim in line for line in fail_lines)
    assert any(line.startswith("WARN ") for line in result.stderr.splitlines())  # still named
    assert "problem(s)" in result.stdout


def test_a_clean_archive_says_ok_without_warnings(kit: ArchiveKit, verify_cli: Any) -> None:
    ids = kit.submit("[scenario:completed] clean")
    kit.archiver().archive(ids)
    result = verify_cli()
    assert result.exit_code == 0
    assert all(line.startswith("verify: ") for line in result.stderr.splitlines())  # progress
    assert result.stdout.strip().endswith(": OK")
