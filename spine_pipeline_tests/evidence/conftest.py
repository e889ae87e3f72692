"""Helpers for evidence tests: synthetic RunData, headless Chromium, a small PNG decoder."""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from spine_pipeline.archive.manifest import Manifest, RunEntry
from spine_pipeline.evidence.run_data import (
    Artifact,
    Block,
    Edge,
    RunData,
    RunError,
    RunRow,
    Source,
    Task,
)
from spine_pipeline.simulator import SimulatorServer
from spine_pipeline_tests.archive.conftest import ArchiveKit

T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def run_row(**overrides: Any) -> RunRow:
    base = RunRow(
        run_id="run-1",
        canvas_id="canvas-1",
        canvas_name="Canvas one",
        canvas_url="https://app.getspine.ai/canvas/canvas-1",
        status="completed",
        prompt="What is the market for heat pumps?",
        template="report",
        template_used="report",
        models_used=("anthropic/claude", None),
        credits_consumed=1234,
        duration_ms=5678,
        final_output="# Final\n\nThe answer.",
        request_name="heat-pumps",
        submitted_at=T0,
        terminal_at=T0,
        archived_at=T0,
        batch_id="batch-1",
        agent_instructions=None,
        fetch_errors=(),
        block_count=0,
        edge_count=0,
        task_count=0,
        artifact_count=0,
        error_count=0,
    )
    return replace(base, **overrides)


def block(ordinal: int, content: str | None = "text", **kw: Any) -> Block:
    values: dict[str, Any] = {
        "ordinal": ordinal,
        "block_id": f"b{ordinal}",
        "name": f"Block {ordinal}",
        "type": "text-block",
        "status": "completed",
        "content": content,
        "url": None,
        "url_redacted": False,
        "content_sha256": None,
        "content_bytes": None if content is None else len(content.encode()),
        "sources_count": 0,
        "sources": (),
    }
    values.update(kw)
    return Block(**values)


def source(idx: int, url: str | None, title: str | None = None) -> Source:
    return Source(idx=idx, url=url, title=title, raw_json=f'"{url}"')


def task(ordinal: int, parent: int | None, depth: int, name: str | None = None) -> Task:
    return Task(
        ordinal=ordinal,
        task_id=f"t{ordinal}",
        parent_ordinal=parent,
        depth=depth,
        name=name or f"task {ordinal}",
        task_type="parent-task" if parent is None else "tool-call-task",
        status="completed",
        subtree="completed",
        child_count=0,
    )


def artifact(ordinal: int, name: str, sha256: str | None = "ab" * 32, **kw: Any) -> Artifact:
    values: dict[str, Any] = {
        "ordinal": ordinal,
        "artifact_id": f"a{ordinal}",
        "type": "docx",
        "name": name,
        "reported_size_bytes": 10,
        "size_bytes": 10,
        "sha256": sha256,
        "content_type": "application/octet-stream",
        "download_error": None,
    }
    values.update(kw)
    return Artifact(**values)


def make_data(
    blocks: list[Block] | tuple[Block, ...] = (),
    edges: list[tuple[str | None, str | None]] | tuple[()] = (),
    tasks: list[Task] | tuple[Task, ...] = (),
    artifacts: list[Artifact] | tuple[Artifact, ...] = (),
    errors: list[RunError] | tuple[RunError, ...] = (),
    **run: Any,
) -> RunData:
    """A RunData as the loader would build it (counts consistent), without an archive."""
    row = run_row(
        block_count=len(blocks),
        edge_count=len(edges),
        task_count=len(tasks),
        artifact_count=len(artifacts),
        error_count=len(errors),
        **run,
    )
    manifest = Manifest(
        seq=7,
        batch_id="batch-1",
        committed_at="2026-01-02T03:04:06.000000Z",
        prev_sha256="cd" * 32,
        schema_version="1",
        runs=(RunEntry(row.run_id, row.status, "2026-01-02", "2026-01-02T03:04:05Z"),),
        files=(),
        artifacts=(),
        sha256="ef" * 32,
    )
    return RunData(
        run=row,
        blocks=tuple(blocks),
        edges=tuple(Edge(i, s, t) for i, (s, t) in enumerate(edges)),
        tasks=tuple(tasks),
        artifacts=tuple(artifacts),
        errors=tuple(errors),
        manifest=manifest,
        files=(),
        artifact_entries=(),
    )


# ----------------------------------------------------------------------------- archives


@pytest.fixture
def kit(simulator: SimulatorServer, archive_uri: str) -> ArchiveKit:
    """The archive tests' kit (simulator + archive root), on both backends."""
    return ArchiveKit(simulator, archive_uri)


@pytest.fixture
def local_kit(simulator: SimulatorServer, tmp_path: Path) -> ArchiveKit:
    """The kit on a local archive only (tests that edit stored files in place)."""
    return ArchiveKit(simulator, str(tmp_path / "archive"))


# ----------------------------------------------------------------------------- chromium


def dom_text(fragment: str) -> str:
    """Visible text of an HTML fragment: tags dropped, entities decoded, spaces collapsed."""
    import html

    return " ".join(html.unescape(re.sub(r"<[^>]*>", " ", fragment)).split())


# ----------------------------------------------------------------------------- png


def png_rows(path: Path, max_rows: int) -> tuple[int, int, list[bytes]]:
    """(width, channels, the first `max_rows` unfiltered pixel rows) of an 8-bit RGB(A) PNG.

    Pillow is not a dependency; zlib and the five PNG row filters are enough to check that a
    screenshot is not blank. Rows depend only on the rows above, so a prefix decodes alone.
    """
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    stride = width * channels
    raw = zlib.decompressobj().decompress(b"".join(idat), (stride + 1) * min(height, max_rows))
    rows: list[bytes] = []
    prev = bytearray(stride)
    for r in range(min(height, max_rows)):
        start = r * (stride + 1)
        ftype, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if ftype == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 0xFF
        elif ftype == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif ftype == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b, c = prev[i], prev[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, channels, rows


def pixel_variety(path: Path, max_rows: int = 700) -> tuple[int, float]:
    """(distinct colours, share of non-white pixels) over the screenshot's top rows."""
    width, channels, rows = png_rows(path, max_rows)
    colours: set[bytes] = set()
    non_white = total = 0
    for line in rows:
        for x in range(0, width * channels, channels):
            px = line[x : x + 3]
            colours.add(px)
            total += 1
            non_white += px != b"\xff\xff\xff"
    return len(colours), non_white / max(total, 1)
