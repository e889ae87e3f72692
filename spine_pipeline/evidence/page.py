"""The evidence page: one run as ONE self-contained, offline, script-free HTML file.

`render_page(data)` is a pure function of its arguments: no clock, no randomness, no
environment, every list in the archive's own order, integer geometry. The same `RunData`
(and the same verification text) give the same bytes, which is what lets `verify-evidence`
check a bundled `index.html` by rendering the bundled data again and comparing.

Safety (every string in a run is untrusted: agents copy web pages):

* a Content-Security-Policy meta tag allows nothing but the page's own `<style>` (by its
  sha256, so not even an inline `style=` attribute applies) and `data:` images; no script
  source at all, no connection, no frame, no form target, no `<base>`;
* block content is Markdown rendered by markdown-it-py with raw HTML *escaped* (`html=False`),
  links only for `http`, `https` and `mailto` (anything else, `javascript:` and `data:`
  included, stays literal text), every link inert until clicked (`rel="noopener noreferrer
  nofollow"`, `referrerpolicy="no-referrer"`), and images rendered as links, never loaded;
* names, ids, statuses and URLs shown as text have control and bidi characters made visible
  (`text.visible`); long text sits in `unicode-bidi: isolate` containers.

Bounded (documented in docs/evidence.md; the full text always stays in the data):

* a block shows at most `BLOCK_TEXT_MAX_BYTES` of its content, then a note;
* all content together (final output first, then blocks in order) is rendered up to
  `PAGE_TEXT_BUDGET_BYTES`; later blocks keep their header, sources and errors, with a note;
* content with more than one `[` per `MARKDOWN_BRACKET_RATIO` characters, or nested deeper
  than markdown-it's `MAX_NESTING`, is shown as plain text (markdown-it-py is slow on the
  first and silently drops text past the second);
* at most `SOURCES_PER_BLOCK_MAX` sources per block and `SOURCES_PAGE_MAX` in all,
  `TASKS_MAX` tasks nested at most `TASK_NEST_MAX` levels (deeper ones listed flat, with
  their depth), `ERRORS_MAX` errors, `ARTIFACTS_MAX` artifacts; names clipped.

So a page costs O(blocks + edges) bytes for headers and the DAG plus a constant for content.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from markdown_it import MarkdownIt
from markdown_it import __version__ as MARKDOWN_IT_VERSION
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

from spine_pipeline.evidence.dag_svg import DagNode, render_dag_svg, status_class
from spine_pipeline.evidence.run_data import Artifact, Block, RunData, RunError, Source, Task
from spine_pipeline.evidence.text import clip, esc, esc_visible, truncate_utf8, visible

__all__ = [
    "ARTIFACTS_MAX",
    "BLOCK_TEXT_MAX_BYTES",
    "CSP",
    "ERRORS_MAX",
    "GENERATOR",
    "MARKDOWN_BRACKET_RATIO",
    "MAX_NESTING",
    "PAGE_FORMAT",
    "PAGE_TEXT_BUDGET_BYTES",
    "SOURCES_PAGE_MAX",
    "SOURCES_PER_BLOCK_MAX",
    "TASKS_MAX",
    "TASK_NEST_MAX",
    "block_anchor",
    "render_markdown",
    "render_page",
    "render_page_bytes",
]

#: Bumped when the same data would render differently (verify-evidence compares bytes).
PAGE_FORMAT = "spine-pipeline-evidence-page/1"
#: In the page's generator tag with PAGE_FORMAT: Markdown output is markdown-it-py's, so a
#: verifier with another version can say why its rendering differs instead of just "changed".
GENERATOR = f"{PAGE_FORMAT} markdown-it-py/{MARKDOWN_IT_VERSION}"

BLOCK_TEXT_MAX_BYTES = 128 * 1024
PAGE_TEXT_BUDGET_BYTES = 2 * 1024 * 1024
MARKDOWN_BRACKET_RATIO = 25
MAX_NESTING = 32
TEXT_FIELD_MAX_BYTES = 64 * 1024  # prompt, agent instructions
SOURCES_PER_BLOCK_MAX = 200
SOURCES_PAGE_MAX = 20_000
TASKS_MAX = 20_000
TASK_NEST_MAX = 48
ERRORS_MAX = 1_000
ARTIFACTS_MAX = 10_000
NAME_CHARS = 200
URL_CHARS = 500
LINK_URL_MAX = 2048

_SAFE_SCHEME = re.compile(r"(?:https?://|mailto:)", re.IGNORECASE)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INERT = ' rel="noopener noreferrer nofollow" referrerpolicy="no-referrer"'

_CSS = """\
:root{color-scheme:light}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
margin:24px auto;max-width:1100px;padding:0 16px;color:#1f2933;background:#fff;line-height:1.45;
overflow-wrap:anywhere}
h1{font-size:22px;margin:0 0 6px;overflow-wrap:anywhere}
h2{font-size:18px;margin:30px 0 8px;border-bottom:1px solid #d9e2ec;padding-bottom:4px}
h3{font-size:15px;margin:0 0 6px;overflow-wrap:anywhere}
h4{font-size:13px;margin:10px 0 4px;color:#486581}
table{border-collapse:collapse;font-size:13px;margin:4px 0 8px}
th,td{border:1px solid #d9e2ec;padding:3px 8px;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
th{background:#f5f7fa;font-weight:600}
#files th,#files td:nth-child(2),#artifacts-table th{white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f5f7fa;padding:8px;margin:4px 0}
.isolate,.content,bdi{unicode-bidi:isolate}
.muted,.note{color:#627d98;font-size:12px}
.note{border-left:3px solid #f0b429;padding-left:8px}
.scroll{overflow:auto;max-height:900px;border:1px solid #d9e2ec;background:#fbfcfd}
svg.dag text{font-size:11px;fill:#102a43}
svg.dag text.ty{fill:#486581}
svg.dag text.st{fill:#334e68;font-style:italic}
svg.dag rect{stroke:#829ab1;stroke-width:1;fill:#f0f4f8}
svg.dag a.node:hover rect{stroke:#1f2933;stroke-width:2}
svg.dag .edge{stroke:#9fb3c8;stroke-width:1.2;fill:none}
svg.dag .edge.back{stroke:#d64545;stroke-dasharray:4 3}
svg.dag rect.s-completed{fill:#e3f9e5}
svg.dag rect.s-running,svg.dag rect.s-pending{fill:#fff3c4}
svg.dag rect.s-failed,svg.dag rect.s-error,svg.dag rect.s-errored{fill:#ffe3e3}
svg.dag rect.s-partial{fill:#ffe8d9}
.st.s-completed{color:#207227}.st.s-failed,.st.s-error,.st.s-errored{color:#ab091e}
.st.s-partial{color:#b44d12}
article.block{border:1px solid #d9e2ec;border-radius:6px;padding:10px 14px;margin:12px 0}
article.block .ty{color:#486581;font-weight:400;font-size:12px}
article.block .st{font-weight:400;font-size:12px}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:0 12px;font-size:12px;margin:4px 0}
dl.meta dt{color:#627d98}dl.meta dd{margin:0;overflow-wrap:anywhere}
.content{border-top:1px dashed #d9e2ec;margin-top:6px}
.content table{display:block;overflow-x:auto}
.content th.al-left,.content td.al-left{text-align:left}
.content th.al-center,.content td.al-center{text-align:center}
.content th.al-right,.content td.al-right{text-align:right}
ol.sources{font-size:12px;margin:2px 0;padding-left:28px}
ul.tasks{list-style:none;padding-left:16px;margin:2px 0;font-size:13px}
ul.tasks summary{cursor:pointer}
.errors li{color:#8a041a}
footer{margin-top:40px;font-size:12px;color:#627d98}
"""

_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode("utf-8")).digest()).decode("ascii")
#: No script source at all; the page's one `<style>` by hash; nothing loaded from anywhere.
CSP = (
    "default-src 'none'; "
    f"style-src 'sha256-{_CSS_HASH}'; "
    "img-src data:; "
    "base-uri 'none'; form-action 'none'"
)


# ----------------------------------------------------------------------------- markdown


class _Markdown(MarkdownIt):
    """CommonMark + tables + strikethrough; raw HTML escaped; only web and mail links."""

    def validateLink(self, url: str) -> bool:
        """Stricter than markdown-it's default (which allows e.g. `data:image/png`): a link
        in an offline evidence page may only point at the web or a mail address."""
        url = url.strip()
        return len(url) <= LINK_URL_MAX and _SAFE_SCHEME.match(url) is not None


def _link_open(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    token = tokens[idx]
    token.attrSet("rel", "noopener noreferrer nofollow")
    token.attrSet("referrerpolicy", "no-referrer")
    return self.renderToken(tokens, idx, options, env)


def _image(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """An image as a link to it: shown, never fetched (no `<img src>` in the page)."""
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env)
    src = str(token.attrGet("src") or "")
    return f'<a class="img" href="{esc(src)}"{_INERT}>[image: {esc(alt)}]</a>'


def _cell_open(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """Table cell alignment as a class: the CSP admits no `style=` attribute."""
    token = tokens[idx]
    style = token.attrGet("style")
    if isinstance(style, str) and style.startswith("text-align:"):
        token.attrs.pop("style", None)
        token.attrSet("class", f"al-{style.split(':', 1)[1].strip()}")
    return self.renderToken(tokens, idx, options, env)


def _markdown() -> _Markdown:
    md = _Markdown(
        "commonmark",
        {"html": False, "linkify": False, "typographer": False, "maxNesting": MAX_NESTING},
    )
    md.enable(["table", "strikethrough"])
    md.add_render_rule("link_open", _link_open)
    md.add_render_rule("image", _image)
    md.add_render_rule("th_open", _cell_open)
    md.add_render_rule("td_open", _cell_open)
    return md


_MD = _markdown()


def render_markdown(text: str) -> tuple[str, bool]:
    """(HTML of `text`, whether it was rendered as Markdown; else it is an escaped `<pre>`)."""
    if text.count("[") * MARKDOWN_BRACKET_RATIO > len(text):
        return _plain(text), False
    env: dict[str, Any] = {}
    tokens = _MD.parse(text, env)
    if any(t.level >= MAX_NESTING - 1 for t in tokens):
        return _plain(text), False  # markdown-it dropped what was nested deeper
    return _MD.renderer.render(tokens, _MD.options, env), True


def _plain(text: str) -> str:
    return f'<pre class="plain">{esc(text)}</pre>'


# ----------------------------------------------------------------------------- helpers


def block_anchor(ordinal: int) -> str:
    """The id of a block's section (ordinals are unique; block ids may repeat)."""
    return f"block-{ordinal}"


def _ts(value: datetime | None) -> str:
    if value is None:
        return "\u2014"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _int(value: int | None, unit: str = "") -> str:
    return "\u2014" if value is None else f"{value:,}{unit}"


def _link(url: str | None) -> str:
    """A URL shown as text, and a (clicked-only) link if it is a web or mail URL."""
    if url is None:
        return "\u2014"
    shown = esc_visible(url, URL_CHARS)
    if len(url) <= LINK_URL_MAX and _SAFE_SCHEME.match(url) and url.isprintable():
        return f'<a href="{esc(url)}"{_INERT}>{shown}</a>'
    return f'<span class="mono">{shown}</span>'


def _row(label: str, value_html: str, row_id: str | None = None) -> str:
    rid = f' id="{row_id}"' if row_id else ""
    return f"<tr{rid}><th>{esc(label)}</th><td>{value_html}</td></tr>"


def _long_text(text: str | None, element_id: str) -> str:
    if text is None:
        return '<p class="muted">\u2014</p>'
    shown, total = truncate_utf8(text, TEXT_FIELD_MAX_BYTES)
    note = ""
    if len(shown) < len(text):
        note = _note(f"shown: the first {len(shown.encode()):,} of {total:,} bytes")
    return f'<pre id="{element_id}" class="isolate" dir="auto">{esc(shown)}</pre>{note}'


def _note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


class _Budget:
    """Content bytes the page may still render (final output first, then blocks in order)."""

    def __init__(self, total: int) -> None:
        self.left = total

    def take(self, text: str) -> tuple[str, int, str | None]:
        """(the part of `text` to render, its full byte length, why it was cut or None)."""
        limit = min(BLOCK_TEXT_MAX_BYTES, self.left)
        shown, total = truncate_utf8(text, max(limit, 0))
        used = len(shown.encode("utf-8", "surrogatepass")) if len(shown) < len(text) else total
        self.left -= used
        if used == total:
            return shown, total, None
        if limit == BLOCK_TEXT_MAX_BYTES:
            why = f"the first {used:,} of {total:,} bytes (the page shows at most "
            why += f"{BLOCK_TEXT_MAX_BYTES:,} bytes of a block)"
        elif used == 0:
            why = f"not shown ({total:,} bytes): the page's {PAGE_TEXT_BUDGET_BYTES:,}-byte "
            why += "content budget is spent"
        else:
            why = f"the first {used:,} of {total:,} bytes (the page's "
            why += f"{PAGE_TEXT_BUDGET_BYTES:,}-byte content budget ran out)"
        return shown, total, why


def _content(text: str | None, budget: _Budget, sha256: str | None) -> str:
    if text is None:
        return '<div class="content empty"><p class="muted">(no content)</p></div>'
    shown, _total, why = budget.take(text)
    body, as_markdown = render_markdown(shown) if shown else ("", True)
    notes = ""
    if why is not None:
        where = f" (sha256 {sha256})" if sha256 else ""
        notes += _note(f"Content truncated: {why}. The full text is in the archived data{where}.")
    if shown and not as_markdown:
        notes += _note("Shown as plain text: too much markup to render as Markdown safely.")
    return f'<div class="content" dir="auto">{body}</div>{notes}'


# ----------------------------------------------------------------------------- sections


def _header(data: RunData) -> str:
    r = data.run
    models = ", ".join("\u2014" if m is None else m for m in r.models_used or ()) or None
    template = f"{esc_visible(r.template)} (used: {esc_visible(r.template_used)})"
    rows = [
        _row("request", esc_visible(r.request_name), "f-request"),
        _row("status", f'<span class="st {status_class(r.status)}">{esc_visible(r.status)}</span>'),
        _row("template", template),
        _row("models", esc_visible(models, 1000)),
        _row("credits", _int(r.credits_consumed), "f-credits"),
        _row("duration", _int(r.duration_ms, " ms")),
        _row("submitted", _ts(r.submitted_at)),
        _row("terminal", _ts(r.terminal_at)),
        _row("archived", _ts(r.archived_at)),
        _row("run id", f'<span class="mono">{esc_visible(r.run_id)}</span>', "f-run-id"),
        _row("canvas id", f'<span class="mono">{esc_visible(r.canvas_id)}</span>'),
        _row("canvas name", f"<bdi>{esc_visible(r.canvas_name, NAME_CHARS)}</bdi>"),
        _row("canvas url", _link(r.canvas_url)),
        _row(
            "counts",
            f"{r.block_count:,} blocks, {r.edge_count:,} edges, {r.task_count:,} tasks, "
            f"{r.artifact_count:,} artifacts, {r.error_count:,} errors",
        ),
    ]
    if r.fetch_errors:
        items = "".join(f"<li>{esc_visible(e, 1000)}</li>" for e in r.fetch_errors[:ERRORS_MAX])
        rows.append(_row("fetch problems", f'<ul class="errors">{items}</ul>'))
    title = r.request_name or r.run_id
    return (
        f'<header id="run"><h1>Spine run <bdi>{esc_visible(title, NAME_CHARS)}</bdi></h1>'
        f'<table id="summary">{"".join(rows)}</table>'
        f"<h4>Prompt</h4>{_long_text(r.prompt, 'prompt')}"
        + (
            f"<details><summary>Agent instructions</summary>"
            f"{_long_text(r.agent_instructions, 'agent-instructions')}</details>"
            if r.agent_instructions is not None
            else ""
        )
        + "</header>"
    )


def _value_html(value: object) -> str:
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    shown = clip(text, 8192)
    if "\n" in shown:
        lines = "\n".join(visible(line) for line in shown.split("\n"))
        return f'<pre class="mono">{esc(lines)}</pre>'
    return f'<span class="mono">{esc(visible(shown))}</span>'


def _verification(
    data: RunData, verification: str | None, checkpoint: Mapping[str, object] | None
) -> str:
    m = data.manifest
    parts = ['<section id="verification"><h2>Verification</h2>']
    if verification is None:
        parts.append(
            '<p id="verification-status">Not verified by this page. It was rendered from the '
            "archive's committed files, each checked against the sha256 its manifest lists; "
            "for a copy that can be checked offline, export an evidence bundle and run "
            "<code>spine-pipeline verify-evidence</code>.</p>"
        )
    else:
        parts.append(f'<p id="verification-status">{esc(visible(verification))}</p>')
    if checkpoint is not None:
        rows = "".join(_row(str(k), _value_html(checkpoint[k])) for k in sorted(checkpoint))
        parts.append(f'<h4>Checkpoint</h4><table id="checkpoint">{rows}</table>')
    files = "".join(
        f'<tr><td class="mono">{esc_visible(f.key, 400)}</td><td>{esc_visible(f.table)}</td>'
        f'<td class="num">{f.rows:,}</td><td class="num">{f.bytes:,}</td>'
        f'<td class="mono">{esc_visible(f.sha256, 64)}</td></tr>'
        for f in data.files
    )
    signed = "signed" if m.signature is not None else "unsigned"
    parts.append(
        f'<h4>Committed by</h4><table id="provenance">'
        f"{_row('manifest', f'{m.seq:,} ({signed})')}"
        f"{_row('manifest sha256', f'<span class=mono>{esc_visible(m.sha256, 64)}</span>')}"
        f"{_row('committed at', esc_visible(m.committed_at))}"
        f"{_row('batch', f'<span class=mono>{esc_visible(m.batch_id)}</span>')}"
        f"{_row('archive id', f'<span class=mono>{esc_visible(m.archive_id)}</span>')}"
        "</table>"
        f"<details><summary>{len(data.files):,} table files read, each checked against the "
        "size and sha256 the manifest lists</summary>"
        '<table id="files"><tr><th>file</th><th>table</th><th>rows</th><th>bytes</th>'
        f"<th>sha256</th></tr>{files}</table></details></section>"
    )
    return "".join(parts)


def _run_errors(errors: Sequence[RunError]) -> str:
    if not errors:
        return ""
    items = "".join(_error_item(e) for e in errors[:ERRORS_MAX])
    more = _more(len(errors), ERRORS_MAX, "errors")
    return (
        f'<section id="errors"><h2>Errors ({len(errors):,})</h2>'
        f'<ul class="errors">{items}</ul>{more}</section>'
    )


def _error_item(e: RunError) -> str:
    where = []
    if e.block_id is not None:
        where.append(f"block {esc_visible(e.block_id)}")
    if e.block_type is not None:
        where.append(esc_visible(e.block_type))
    if e.recoverable is not None:
        where.append("recoverable" if e.recoverable else "not recoverable")
    suffix = f' <span class="muted">({", ".join(where)})</span>' if where else ""
    return f"<li>{esc_visible(e.error, 2000)}{suffix}</li>"


def _more(total: int, shown: int, what: str) -> str:
    if total <= shown:
        return ""
    return _note(f"{total - shown:,} more {what} are in the archived data, not on this page.")


def _canvas(data: RunData) -> str:
    nodes = [
        DagNode(b.block_id, b.type, b.name, b.status, f"#{block_anchor(b.ordinal)}")
        for b in data.blocks
    ]
    edges = [(e.source_id, e.target_id) for e in data.edges]
    dag = render_dag_svg(nodes, edges)
    notes = ""
    if dag.layering.back:
        notes += _note(
            f"{len(dag.layering.back):,} edge(s) point upwards or to their own block (dashed): "
            "the graph as received has cycles or self-loops."
        )
    dangling = dag.dangling
    if dangling:
        listed = ", ".join(
            f"{esc_visible(data.edges[e].source_id, 80)} \u2192 "
            f"{esc_visible(data.edges[e].target_id, 80)}"
            for e in dangling[:20]
        )
        more = f" and {len(dangling) - 20:,} more" if len(dangling) > 20 else ""
        notes += (
            f'<p class="note" id="dangling">{len(dangling):,} edge(s) name no block and are '
            f"not drawn: {listed}{more}.</p>"
        )
    layers = len(dag.layering.layers)
    return (
        f'<section id="canvas"><h2>Canvas ({len(nodes):,} blocks, {len(edges):,} edges, '
        f'{layers:,} layers)</h2><div class="scroll">{dag.svg}</div>{notes}</section>'
    )


def _final_output(data: RunData, budget: _Budget) -> str:
    text = data.run.final_output
    if text is None:
        return ""
    return (
        '<section id="final-output"><h2>Final output</h2><details><summary>'
        f"{len(text.encode('utf-8', 'surrogatepass')):,} bytes</summary>"
        f"{_content(text, budget, None)}</details></section>"
    )


def _sources(sources: Sequence[Source], left: int) -> tuple[str, int]:
    if not sources:
        return "", 0
    shown = list(sources[: max(min(SOURCES_PER_BLOCK_MAX, left), 0)])
    items = []
    for s in shown:
        title = f"<bdi>{esc_visible(s.title, NAME_CHARS)}</bdi> " if s.title is not None else ""
        if s.url is not None:
            body = title + _link(s.url)
        elif title:
            body = title
        else:
            body = f'<span class="mono">{esc_visible(s.raw_json, URL_CHARS)}</span>'
        items.append(f"<li>{body}</li>")
    more = _more(len(sources), len(shown), "sources of this block")
    html = f'<h4>Sources ({len(sources):,})</h4><ol class="sources">{"".join(items)}</ol>{more}'
    return html, len(shown)


def _blocks(data: RunData, budget: _Budget) -> str:
    errors_by_block: dict[str, list[RunError]] = {}
    for e in data.errors:
        if e.block_id is not None:
            errors_by_block.setdefault(e.block_id, []).append(e)
    sources_left = SOURCES_PAGE_MAX
    parts = [f'<section id="blocks"><h2>Blocks ({len(data.blocks):,})</h2>']
    for b in data.blocks:
        sources_html, used = _sources(b.sources, sources_left)
        sources_left -= used
        block_errors = errors_by_block.get(b.block_id, []) if b.block_id is not None else []
        parts.append(_block(b, budget, sources_html, block_errors))
    parts.append("</section>")
    return "".join(parts)


def _block(b: Block, budget: _Budget, sources_html: str, errors: Sequence[RunError]) -> str:
    meta = [
        f'<dt>id</dt><dd class="mono">{esc_visible(b.block_id)}</dd>',
        f"<dt>ordinal</dt><dd>{b.ordinal}</dd>",
    ]
    if b.url is not None:
        redacted = ' <span class="muted">(query, fragment or userinfo removed)</span>'
        meta.append(f"<dt>url</dt><dd>{_link(b.url)}{redacted if b.url_redacted else ''}</dd>")
    if b.content is not None:
        meta.append(
            f"<dt>content</dt><dd>{_int(b.content_bytes, ' bytes')}, sha256 "
            f'<span class="mono">{esc_visible(b.content_sha256, 64)}</span></dd>'
        )
    errs = ""
    if errors:
        items = "".join(_error_item(e) for e in errors[:ERRORS_MAX])
        errs = f'<h4>Errors ({len(errors):,})</h4><ul class="errors">{items}</ul>'
    status = f'<span class="st {status_class(b.status)}">{esc_visible(b.status, 80)}</span>'
    return (
        f'<article class="block" id="{block_anchor(b.ordinal)}">'
        f'<h3><span class="ty">{esc_visible(b.type, 80)}</span> '
        f"<bdi>{esc_visible(b.name, NAME_CHARS)}</bdi> {status}</h3>"
        f'<dl class="meta">{"".join(meta)}</dl>'
        f"{_content(b.content, budget, b.content_sha256)}{sources_html}{errs}</article>"
    )


def _task_label(t: Task, nested: bool) -> str:
    depth = "" if nested else f' <span class="muted">(depth {t.depth:,})</span>'
    return (
        f'<span class="ty muted">{esc_visible(t.task_type, 40)}</span> '
        f"<bdi>{esc_visible(t.name, NAME_CHARS)}</bdi> "
        f'<span class="st {status_class(t.status)}">{esc_visible(t.status, 40)}</span>{depth}'
    )


def _tasks(tasks: Sequence[Task]) -> str:
    """The task tree as nested `<details>`, iteratively (a 10,000-deep chain is one loop).

    Nesting stops at `TASK_NEST_MAX`: deeper tasks are listed flat inside the deepest level,
    each with its depth (browsers cap DOM nesting, and nobody reads level 5,000 indented).
    A task whose parent is missing, or that no root reaches, is shown as a root.
    """
    if not tasks:
        return ""
    position = {t.ordinal: i for i, t in enumerate(tasks)}
    children: list[list[int]] = [[] for _ in tasks]
    roots: list[int] = []
    for i, t in enumerate(tasks):
        parent = position.get(t.parent_ordinal) if t.parent_ordinal is not None else None
        if parent is None or parent == i:
            roots.append(i)
        else:
            children[parent].append(i)
    out = [f'<section id="tasks"><h2>Task tree ({len(tasks):,} tasks)</h2><ul class="tasks">']
    seen = [False] * len(tasks)
    shown = 0
    close = "</ul></details></li>"
    stack: list[tuple[int, int]] = []  # (task index, nesting level); index -1: close a level
    starts = iter(roots + list(range(len(tasks))))  # then anything no root reached
    while shown < TASKS_MAX:
        if not stack:
            start = next((i for i in starts if not seen[i]), None)
            if start is None:
                break
            stack.append((start, 0))
        i, level = stack.pop()
        if i < 0:
            out.append(close)
            continue
        if seen[i]:
            continue
        seen[i] = True
        shown += 1
        t = tasks[i]
        kids = [c for c in children[i] if not seen[c]]
        if not kids:
            out.append(f"<li>{_task_label(t, level < TASK_NEST_MAX)}</li>")
        elif level >= TASK_NEST_MAX:  # flat from here on: the label, then children alongside
            out.append(f"<li>{_task_label(t, False)}</li>")
            stack.extend((c, level) for c in reversed(kids))
        else:
            is_open = " open" if level < 2 else ""
            out.append(
                f"<li><details{is_open}><summary>{_task_label(t, True)} "
                f'<span class="muted">({len(kids):,})</span></summary><ul class="tasks">'
            )
            stack.append((-1, level))
            stack.extend((c, level + 1) for c in reversed(kids))
    out.extend(close for i, _ in stack if i < 0)  # TASKS_MAX reached: close what is open
    out.append("</ul>")
    out.append(_more(len(tasks), shown, "tasks"))
    out.append("</section>")
    return "".join(out)


def _artifacts(artifacts: Sequence[Artifact], links: bool) -> str:
    if not artifacts:
        return ""
    rows = []
    for a in artifacts[:ARTIFACTS_MAX]:
        sha = a.sha256 if a.sha256 is not None and _SHA256.fullmatch(a.sha256) else None
        if a.download_error is not None or sha is None:
            problem = esc_visible(a.download_error or "no bytes", 500)
            file_cell = f'<span class="errors">{problem}</span>'
        elif links:
            file_cell = f'<a href="artifacts/{sha}" class="mono">artifacts/{sha}</a>'
        else:
            file_cell = (
                f'<span class="mono">artifacts/sha256/{sha[:2]}/{sha}</span> '
                '<span class="muted">(in the archive)</span>'
            )
        size = a.size_bytes if a.size_bytes is not None else a.reported_size_bytes
        rows.append(
            f'<tr><td class="num">{a.ordinal}</td>'
            f"<td><bdi>{esc_visible(a.name, NAME_CHARS)}</bdi></td>"
            f'<td>{esc_visible(a.type, 40)}</td><td class="num">{_int(size)}</td>'
            f'<td class="mono">{esc_visible(a.sha256, 64)}</td><td>{file_cell}</td></tr>'
        )
    return (
        f'<section id="artifacts"><h2>Artifacts ({len(artifacts):,})</h2>'
        '<table id="artifacts-table"><tr><th>#</th><th>name</th><th>type</th><th>bytes</th>'
        f"<th>sha256</th><th>file</th></tr>{''.join(rows)}</table>"
        f"{_more(len(artifacts), ARTIFACTS_MAX, 'artifacts')}</section>"
    )


def _footer(data: RunData) -> str:
    return (
        f"<footer><p>{esc(PAGE_FORMAT)}: rendered from manifest {data.manifest.seq:,} of the "
        "archive, with no script and no network access. Limits: "
        f"{BLOCK_TEXT_MAX_BYTES:,} bytes of content per block, {PAGE_TEXT_BUDGET_BYTES:,} "
        f"bytes of content per page, {SOURCES_PER_BLOCK_MAX:,} sources per block, "
        f"{TASKS_MAX:,} tasks; the archived data always holds everything.</p></footer>"
    )


# ----------------------------------------------------------------------------- page


def render_page(
    data: RunData,
    *,
    verification: str | None = None,
    checkpoint: Mapping[str, object] | None = None,
    artifact_links: bool = True,
) -> str:
    """The page for `data`: a deterministic function of the arguments (see module docstring).

    `verification` is a one-line status and `checkpoint` the signed checkpoint's fields, both
    from the caller (the bundle writer, after checking them); without them the page says it
    is not verified. `artifact_links=False` (for `show`, which bundles no files) names each
    artifact's archive key instead of linking to `artifacts/<sha256>` next to the page.
    """
    budget = _Budget(PAGE_TEXT_BUDGET_BYTES)
    r = data.run
    title = f"Spine run {r.run_id}" + (f" \u2014 {r.request_name}" if r.request_name else "")
    parts: Iterable[str] = (
        "<!DOCTYPE html>\n",
        '<html lang="en"><head><meta charset="utf-8">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">\n',
        '<meta name="referrer" content="no-referrer">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f'<meta name="generator" content="{esc(GENERATOR)}">\n',
        f"<title>{esc_visible(title, 300)}</title>\n",
        f"<style>{_CSS}</style></head>\n<body>\n",
        _header(data),
        "\n",
        _verification(data, verification, checkpoint),
        "\n",
        _run_errors(data.errors),
        _canvas(data),
        "\n",
        _final_output(data, budget),
        _blocks(data, budget),
        "\n",
        _tasks(data.tasks),
        _artifacts(data.artifacts, artifact_links),
        _footer(data),
        "\n</body></html>\n",
    )
    return "".join(parts)


def render_page_bytes(data: RunData, **kwargs: Any) -> bytes:
    """`render_page` as UTF-8 bytes (what is written and what verify-evidence compares)."""
    return render_page(data, **kwargs).encode("utf-8", "replace")
