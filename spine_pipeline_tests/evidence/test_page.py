"""The evidence page: deterministic, self-contained, safe with hostile content, bounded.

Hostile content here is synthetic (fast, and it goes further than the simulator: a
10,000-deep task tree, markup aimed at the page itself); the same shapes through the real
archive are in test_show.py. No script may run: the payloads try to set a marker (the title,
an attribute on <html>) and headless Chromium's DOM must not have it; a loopback server
counts requests and must see none.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spine_pipeline.evidence import page as page_mod
from spine_pipeline.evidence.page import (
    BLOCK_TEXT_MAX_BYTES,
    CSP,
    PAGE_TEXT_BUDGET_BYTES,
    SOURCES_PER_BLOCK_MAX,
    TASK_NEST_MAX,
    render_markdown,
    render_page,
    render_page_bytes,
)
from spine_pipeline.evidence.run_data import RunError
from spine_pipeline_tests.evidence.conftest import (
    artifact,
    block,
    dom_text,
    make_data,
    source,
    task,
)

PWN = "document.title='PWNED';document.documentElement.setAttribute('data-pwned','1')"


def _sample_data():
    blocks = [
        block(
            0,
            "# Intro\n\nSome **bold** text and a [link](https://example.org/a).",
            type="web-block",
            url="https://example.org/a",
            sources=(source(0, "https://example.org/s", "S"),),
        ),
        block(1, "| a | b |\n|--:|:-:|\n| 1 | 2 |", type="table-block"),
        block(2, None, status="failed", type="image-block"),
    ]
    tasks = [task(0, None, 0), task(1, 0, 1), task(2, 1, 2), task(3, None, 0)]
    return make_data(
        blocks,
        [("b0", "b1"), ("b1", "b2")],
        tasks,
        [artifact(0, "memo.docx"), artifact(1, "broken.xlsx", None, download_error="HTTP 403")],
        [RunError(0, "block failed", "b2", "image-block", True)],
    )


# ----------------------------------------------------------------------------- determinism


def test_same_data_same_bytes_and_no_clock_or_randomness() -> None:
    data = _sample_data()
    checkpoint = {"size": 7, "root": "ab" * 32, "origin": "spine-pipeline/x", "note": "a\nb"}
    first = render_page_bytes(data, verification="verified", checkpoint=checkpoint)
    again = render_page_bytes(
        _sample_data(), verification="verified", checkpoint=dict(reversed(checkpoint.items()))
    )
    assert first == again
    assert render_page(data) != render_page(data, verification="verified")


@pytest.mark.parametrize("seed", ["1", "2"])
def test_rendering_does_not_depend_on_hash_seed(seed: str) -> None:
    # A set or dict-order dependence would show as different bytes under another hash seed.
    code = (
        "import hashlib\n"
        "from spine_pipeline_tests.evidence.test_page import _sample_data\n"
        "from spine_pipeline.evidence.page import render_page_bytes\n"
        "print(hashlib.sha256(render_page_bytes(_sample_data())).hexdigest())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).parents[2],
    ).stdout.strip()
    assert out == hashlib.sha256(render_page_bytes(_sample_data())).hexdigest()


# ----------------------------------------------------------------------------- content


def test_page_shows_header_canvas_blocks_tasks_and_artifacts() -> None:
    html = render_page(_sample_data(), artifact_links=True)
    assert html.startswith("<!DOCTYPE html>")
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in html.replace(
        "&#x27;", "'"
    )
    for text in (
        "heat-pumps",
        "What is the market for heat pumps?",
        "1,234",
        "5,678 ms",
        "anthropic/claude",
        "run-1",
        "canvas-1",
        "report (used: report)",
        "2026-01-02 03:04:05.678 UTC",
        "Not verified by this page",
    ):
        assert text in html, text
    assert html.count('class="node"') == 3 and html.count('<article class="block"') == 3
    assert '<a class="node" href="#block-2">' in html and 'id="block-2"' in html
    assert "<strong>bold</strong>" in html  # Markdown rendered
    assert 'class="al-right"' in html and "style=" not in html  # CSP allows no style attribute
    tasks_html = html[html.index('<section id="tasks">') :]
    assert tasks_html.count("<details") == 2  # task 0 (with 1 below it) and task 1
    assert '<a href="artifacts/' + "ab" * 32 + '"' in html
    assert "HTTP 403" in html and "block failed" in html
    shown = render_page(_sample_data(), artifact_links=False)
    assert "artifacts/sha256/ab/" + "ab" * 32 in shown and 'href="artifacts/' not in shown


def test_markdown_links_are_inert_and_images_never_load() -> None:
    html, as_md = render_markdown(
        "[ok](https://example.org/x) [js](javascript:alert(1)) [d](data:text/html,x) "
        "[f](file:///etc/passwd) [rel](../../etc/passwd) ![pic](https://example.org/p.png) "
        "![inline](data:image/png;base64,AAAA) <mailto:a@b.example> <b onclick=x>raw</b>"
    )
    assert as_md
    assert re.findall(r'href="([^"]*)"', html) == [
        "https://example.org/x",
        "https://example.org/p.png",
        "mailto:a@b.example",
    ]
    assert html.count('rel="noopener noreferrer nofollow"') == 3
    assert "<img" not in html and "[image: pic]" in html
    assert "&lt;b onclick=x&gt;raw&lt;/b&gt;" in html
    assert "[js](javascript:alert(1))" in html  # not a link: literal text


def test_pathological_markdown_falls_back_to_plain_text_fast_and_whole() -> None:
    started = time.monotonic()
    brackets, as_md = render_markdown("[" * 120_000 + "end")
    deep, deep_md = render_markdown("".join(">" * 60 + f" line {i}\n" for i in range(50)))
    assert time.monotonic() - started < 5
    assert not as_md and brackets.startswith('<pre class="plain">') and "end" in brackets
    assert not deep_md and all(f"line {i}" in deep for i in range(50))  # nothing dropped


def test_names_and_urls_show_control_and_bidi_characters_visibly() -> None:
    data = make_data(
        [block(0, "x", name="invoice\u202excod.exe.png", block_id="id\x1b[31m")],
        run_id="run-1",
        request_name="name\u2066iso",
    )
    html = render_page(data)
    assert "\u202e" not in html and "\u2066" not in html and "\x1b" not in html
    assert "invoice\\u202excod.exe.png" in html and "id\u241b[31m" in html


# ----------------------------------------------------------------------------- bounded


def test_a_20_mb_block_is_truncated_with_a_note() -> None:
    big = ("word " * 200 + "\n\n") * (20 * 1024 * 1024 // 1002)
    data = make_data([block(0, big, content_sha256="c0" * 32)])
    started = time.monotonic()
    html = render_page(data)
    assert time.monotonic() - started < 10
    assert len(html) < BLOCK_TEXT_MAX_BYTES * 2
    assert f"the first {BLOCK_TEXT_MAX_BYTES:,} of {len(big):,} bytes" in html
    assert "c0" * 32 in html  # the note names the full text's hash


def test_20000_blocks_list_every_header_within_the_content_budget() -> None:
    n = 20_000
    blocks = [block(i, f"Block {i}: " + "content words " * 14) for i in range(n)]
    edges = [(f"b{i}", f"b{i + 1}") for i in range(n - 1)]
    started = time.monotonic()
    html = render_page(make_data(blocks, edges))
    elapsed = time.monotonic() - started
    assert elapsed < 60, elapsed
    assert html.count('<article class="block"') == n and html.count('class="node"') == n
    assert "Block 0: content" in html and f'id="block-{n - 1}"' in html
    shown = len(re.findall(r"Block \d+: content", html))
    total_text = sum(len(b.content.encode()) for b in blocks if b.content)
    assert total_text > PAGE_TEXT_BUDGET_BYTES and shown < n
    assert "content budget is spent" in html
    assert len(html) < 1_500 * n + 4 * PAGE_TEXT_BUDGET_BYTES, len(html)


def test_a_10000_deep_task_tree_renders_iteratively_with_bounded_nesting() -> None:
    n = 10_000
    tasks = [task(i, i - 1 if i else None, i) for i in range(n)]
    started = time.monotonic()
    html = render_page(make_data(tasks=tasks))
    assert time.monotonic() - started < 20
    tasks_html = html[html.index('<section id="tasks">') :]
    assert tasks_html.count("<details") == TASK_NEST_MAX  # nested up to the cap, then flat
    assert all(f"task {i}<" in html for i in (0, TASK_NEST_MAX, n - 1))
    assert f"(depth {n - 1:,})" in html
    assert tasks_html.count("<li>") == n
    assert len(html) < 600 * n


def test_task_cycles_and_orphans_are_shown_once() -> None:
    # A hostile parent chain: 1 -> 2 -> 1 never reaches a root; 3's parent does not exist.
    tasks = [task(0, None, 0), task(1, 2, 1), task(2, 1, 1), task(3, 99, 1)]
    html = render_page(make_data(tasks=tasks))
    for i in range(4):
        assert html.count(f">task {i}<") == 1, i


def test_many_sources_are_capped_per_block() -> None:
    sources = tuple(source(i, f"https://s.example/{i}") for i in range(10_000))
    html = render_page(make_data([block(0, "x", sources=sources, sources_count=10_000)]))
    assert html.count("https://s.example/") == 2 * SOURCES_PER_BLOCK_MAX  # href and text
    assert f"{10_000 - SOURCES_PER_BLOCK_MAX:,} more sources of this block" in html


# ----------------------------------------------------------------------------- hostile, in Chromium


class _Counter(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tripwire() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server that records every request: the page must make none."""
    _Counter.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Counter.hits
    finally:
        server.shutdown()
        server.server_close()


def _hostile_data(base: str):
    payload = (
        f"# Report <script>{PWN}</script>\n\n"
        f'<img src="{base}/img" onerror="{PWN}">\n\n'
        f'<svg onload="{PWN}"></svg> <body onload="{PWN}">\n\n'
        f'<iframe src="{base}/frame" srcdoc="<script>parent.{PWN}</script>"></iframe>\n\n'
        f'<meta http-equiv="refresh" content="0;url=javascript:{PWN}">\n\n'
        f'<base href="{base}/base/"><link rel=stylesheet href="{base}/link.css">\n\n'
        f"<style>body{{background:url({base}/css)}}</style>\n\n"
        f"[click](javascript:{PWN}) [data](data:text/html,<script>{PWN}</script>) "
        f"<javascript:{PWN}> ![pixel]({base}/pixel.png) [ok]({base}/page)\n\n"
        f'<a href="javascript:{PWN}">raw</a> <object data="{base}/obj"></object>\n\n'
        "RTL: invoice\u202excod.exe and \u05e9\u05dc\u05d5\u05dd\n"
    )
    hostile = f'"><script>{PWN}</script><img src=x onerror="{PWN}">'
    blocks = [
        block(
            0,
            payload,
            name=hostile,
            type=hostile,
            status=hostile,
            block_id=hostile,
            url=f"javascript:{PWN}",
            sources=(
                source(0, f"javascript:{PWN}", hostile),
                source(1, f"{base}/source", "a source"),
                source(2, None, None),
            ),
        ),
        block(1, "plain **second** block", name="invoice\u202excod.exe"),
    ]
    return make_data(
        blocks,
        [(hostile, "b1"), ("b1", hostile)],
        [task(0, None, 0, name=hostile), task(1, 0, 1, name=f"<svg onload={PWN}>")],
        [artifact(0, hostile)],
        [RunError(0, hostile, hostile, hostile, None)],
        request_name=f"</title><script>{PWN}</script>",
        prompt=f"</pre><script>{PWN}</script>",
        canvas_url=f"javascript:{PWN}",
        canvas_name=hostile,
        final_output=payload,
        fetch_errors=(hostile,),
    )


def _assert_inert(dom: str) -> None:
    title = re.search(r"<title>(.*?)</title>", dom, re.S).group(1)  # type: ignore[union-attr]
    assert title != "PWNED" and title.startswith("Spine run")
    assert not re.search(r"<[a-z][^>]*\sdata-pwned=", dom, re.I)  # the payload's attribute
    for tag in (
        "<script",
        "<img",
        "<iframe",
        "<object",
        "<embed",
        "<base",
        "<link",
        '<meta http-equiv="refresh"',
    ):
        assert tag not in dom, tag
    assert not re.search(r"<[a-z][^>]*\son[a-z]+\s*=", dom, re.I), "an event-handler attribute"
    # In real tags only: the payloads themselves are on the page, as text (`&lt;a href=...`).
    assert not re.search(r'<[a-z][^<>]*\shref="\s*(javascript|data|vbscript|file):', dom, re.I)


def test_hostile_content_runs_no_script_and_loads_nothing(
    chromium, tripwire, tmp_path: Path
) -> None:
    base, hits = tripwire
    page = tmp_path / "hostile.html"
    page.write_bytes(
        render_page_bytes(
            _hostile_data(base),
            verification=f"<script>{PWN}</script>",
            checkpoint={"note": f"<img src=x onerror={PWN}>"},
        )
    )
    run = chromium(page, "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    _assert_inert(dom)
    assert hits == []
    text = dom_text(dom)
    assert f"<script>{PWN}</script>" in text  # shown as text, not run
    assert "invoice\\u202excod.exe" in text and "\u05e9\u05dc\u05d5\u05dd" in text
    assert dom.count('class="node"') == 2


def test_the_marker_would_be_seen_if_a_script_ran(chromium, tripwire, tmp_path: Path) -> None:
    """Control: the same payload put into a page raw (no escaping, no CSP) does run and load,
    so the assertions above can fail."""
    base, hits = tripwire
    raw = tmp_path / "raw.html"
    raw.write_text(f"<!DOCTYPE html><title>t</title><img src='{base}/img' onerror=\"{PWN}\">")
    dom = chromium(raw, "--dump-dom").stdout
    assert "<title>PWNED</title>" in dom and re.search(r"<html[^>]*\sdata-pwned=", dom)
    assert "/img" in hits


def test_style_csp_hash_matches_the_style_element() -> None:
    html = render_page(_sample_data())
    css = re.search(r"<style>(.*?)</style>", html, re.S).group(1)  # type: ignore[union-attr]
    import base64

    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in CSP
    assert "script-src" not in CSP and CSP.startswith("default-src 'none'")
    assert css == page_mod._CSS
