"""Reuse the spare snapshot or copy the published one: whichever costs less (issue 20).

The spare lags one refresh behind, so reusing it re-ingests everything that refresh added.
After a burst's big refresh of a small database a copy is far cheaper; on a large database
refreshed a batch at a time the catch-up is. The rule looks only at the two file sizes.
"""

from __future__ import annotations

import os
from pathlib import Path

from spine_pipeline.audit.snapshot import (
    COPY_MIN_GROWTH,
    copy_is_cheaper,
    paths_for,
    prepare_spare,
)

MB = 1 << 20


def test_copy_after_a_big_refresh_of_a_small_database() -> None:
    # A 1,000-run burst: the previous refresh took the file from 60 MB to 134 MB.
    assert copy_is_cheaper(134 * MB, 60 * MB)


def test_catch_up_after_a_small_refresh_of_a_large_database() -> None:
    # 100,000 runs (1.3 GB) and one 100-run manifest (about 13 MB) since.
    assert not copy_is_cheaper(1300 * MB, 1287 * MB)
    # Just over a tenth of the file, by fewer bytes than the minimum: still a catch-up.
    assert not copy_is_cheaper(10 * MB, 8 * MB)
    assert not copy_is_cheaper(50 * MB, 50 * MB)


def test_the_two_thresholds_both_apply() -> None:
    big = COPY_MIN_GROWTH * 20
    assert copy_is_cheaper(big, big - 3 * COPY_MIN_GROWTH)  # 15 % of it
    assert not copy_is_cheaper(big, big - COPY_MIN_GROWTH)  # 5 % of it


def _file(path: Path, size: int, fill: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(fill * 4096)
        fh.truncate(size)  # sparse beyond the first page: cheap to create
    path.chmod(0o600)


def test_prepare_spare_copies_when_cheaper_and_reuses_otherwise(tmp_path: Path) -> None:
    paths = paths_for(tmp_path / "audit.duckdb")
    grown = COPY_MIN_GROWTH * 3
    _file(paths.published, grown, b"P")
    _file(paths.spare, COPY_MIN_GROWTH, b"S")
    spare, how = prepare_spare(paths, fresh=False)
    assert how == "copied"
    assert spare.read_bytes()[:4096] == b"P" * 4096  # the published content, not the old spare
    assert os.stat(spare).st_size == grown

    _file(paths.spare, grown - MB, b"S")  # the previous refresh added little
    spare, how = prepare_spare(paths, fresh=False)
    assert how == "reused"
    assert spare.read_bytes()[:4096] == b"S" * 4096
