"""Pure units: artifact builders, the streamed PNG, the iterative JSON encoder, form parsing."""

from __future__ import annotations

import io
import json
import random
import struct
import zipfile
import zlib

import pytest

from spine_pipeline.simulator.artifacts import BigPng, build_artifact, noise_png
from spine_pipeline.simulator.jsonio import dumps, dumps_iterative
from spine_pipeline.simulator.multipart import FormError, parse_form

CONTENT = "# Title café\n\n- one\n- two 日本語 🚀\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\x00\x07 bad controls"


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


def _png_pixels_ok(data: bytes) -> None:
    chunks = _png_chunks(data)
    width, height, depth, color = struct.unpack(">IIBB", chunks[0][1][:10])
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert (depth, color) == (8, 2) and len(raw) == height * (1 + 3 * width)


@pytest.mark.parametrize(
    ("kind", "members"),
    [
        ("docx", {"[Content_Types].xml", "_rels/.rels", "word/document.xml"}),
        (
            "xlsx",
            {"[Content_Types].xml", "_rels/.rels", "xl/workbook.xml", "xl/worksheets/sheet1.xml"},
        ),
        (
            "pptx",
            {"[Content_Types].xml", "_rels/.rels", "ppt/presentation.xml", "ppt/slides/slide1.xml"},
        ),
    ],
)
def test_ooxml_artifacts_are_valid_zips_with_the_content(kind, members):
    data = build_artifact(kind, "Quarterly résumé", CONTENT, "seed", 60_000)
    assert data == build_artifact(kind, "Quarterly résumé", CONTENT, "seed", 60_000)
    assert 30_000 < len(data) < 120_000
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        assert members <= set(archive.namelist())
        text = "".join(
            archive.read(name).decode("utf-8")
            for name in archive.namelist()
            if name.endswith(".xml")
        )
        assert "日本語" in text and "café" in text and "\x00" not in text
        for name in archive.namelist():
            if name.endswith((".xml", ".rels")):
                from xml.dom import minidom

                minidom.parseString(archive.read(name))  # well-formed XML
        _png_pixels_ok(archive.read("docProps/thumbnail.png"))


def test_html_and_png_artifacts():
    page = build_artifact("html", "Landing <page>", CONTENT, "s", 50_000)
    assert page.startswith(b"<!DOCTYPE html>") and b"&lt;page&gt;" in page
    assert 25_000 < len(page) < 80_000
    png = build_artifact("png", "x", "", "s", 20_000)
    _png_pixels_ok(png)
    assert noise_png("a", 5_000) != noise_png("b", 5_000)


def test_big_png_streams_a_valid_file_of_the_announced_size():
    big = BigPng("seed", 3_000_000)
    pieces = list(big.iter_bytes(group=4))
    data = b"".join(pieces)
    assert len(data) == big.size and len(pieces) > 2
    _png_pixels_ok(data)
    import hashlib

    assert hashlib.sha256(data).hexdigest() == big.sha256() == BigPng("seed", 3_000_000).sha256()


def test_iterative_encoder_matches_json_dumps():
    rng = random.Random(3)

    def value(depth: int):
        choice = rng.randrange(9 if depth < 6 else 6)
        if choice == 0:
            return None
        if choice == 1:
            return rng.random() < 0.5
        if choice == 2:
            return rng.randint(-(10**12), 10**12)
        if choice == 3:
            return rng.uniform(-1e6, 1e6)
        if choice in (4, 5):
            return "".join(rng.choice('ab"\\\n\x00é日🚀\u202e') for _ in range(rng.randrange(8)))
        if choice == 6:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {str(rng.random()): value(depth + 1) for _ in range(rng.randrange(4))}

    for _ in range(300):
        sample = value(0)
        assert dumps_iterative(sample) == dumps(sample)
    assert dumps_iterative({1: "a", None: 2, False: [], 2.5: 0}) == json.dumps(
        {1: "a", None: 2, False: [], 2.5: 0}, ensure_ascii=False, separators=(",", ":")
    )
    deep: dict = {}
    node = deep
    for _ in range(20_000):
        node["c"] = {}
        node = node["c"]
    assert dumps_iterative(deep).count("{") == 20_001


def test_multipart_parser_keeps_bytes_exactly():
    import httpx

    payload = b"\r\n--not-a-boundary\r\n\x00\xff" * 3
    request = httpx.Request(
        "POST",
        "http://x/v1/run",
        data={"prompt": "héllo\r\nworld", "blocks": '["a"]'},
        files=[
            ("files", ("a.bin", payload, "application/octet-stream")),
            ("files", ('qu"ote\\s.txt', b"", "text/plain")),
        ],
    )
    body = request.read()
    parts = parse_form(request.headers["content-type"], body)
    fields = {p.name: p.text for p in parts if p.filename is None}
    assert fields == {"prompt": "héllo\r\nworld", "blocks": '["a"]'}
    files = [(p.filename, p.content_type, p.data) for p in parts if p.filename is not None]
    assert files == [
        ("a.bin", "application/octet-stream", payload),
        ('qu"ote\\s.txt', "text/plain", b""),
    ]


def test_form_parser_urlencoded_and_errors():
    parts = parse_form("application/x-www-form-urlencoded", b"prompt=a+b%26c&template=")
    assert [(p.name, p.text) for p in parts] == [("prompt", "a b&c"), ("template", "")]
    assert parse_form(None, b"") == []
    with pytest.raises(FormError):
        parse_form("application/json", b"{}")
    with pytest.raises(FormError):
        parse_form("multipart/form-data", b"")
    star = b"--B\r\nContent-Disposition: form-data; name=\"files\"; filename*=UTF-8''%E6%97%A5.txt\r\n\r\nx\r\n--B--"
    (part,) = parse_form("multipart/form-data; boundary=B", star)
    assert part.filename == "日.txt" and part.data == b"x"
