"""Canvas generation: blocks, edges, task tree, errors and markdown for one run.

Two lazy stages, both pure functions of a :class:`RunContext`:

* :func:`build_plan` - cheap: block ids/types/names/final statuses, edges, the task tree, errors,
  credits. Enough to answer progress polls for thousands of in-flight runs.
* :func:`fill_content` - markdown content, sources, artifact sizes, final output. Done on the
  first request that needs it (DAG, terminal GET, ground truth).

Scenario markers (``[scenario:NAME]`` in the prompt) bend both stages; see docs/simulator.md.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from .prose import (
    ASPECTS,
    COMPANIES,
    NON_ASCII,
    Writer,
    clean_prompt,
    file_stem,
    odd_source,
    sources_for,
    title_case,
    topic_of,
    web_source,
    web_url,
)
from .vocab import (
    ARTIFACT_TYPE,
    IMAGE_CONTENT_TYPES,
    IMAGE_EXTENSIONS,
    TEMPLATE_BLOCKS,
    TEMPLATE_OUTPUT,
)

SCENARIOS: frozenset[str] = frozenset(
    {
        "completed",
        "partial",
        "failed",
        "slow",
        "hostile-names",
        "huge-content",
        "many-blocks",
        "deep-tasks",
        "odd-sources",
        "unknown-status",
        "unknown-fields",
        "bad-utf8",
        "invalid-json",
        "lying-length",
        "size-mismatch",
        "canvas-404",
        "duplicate-blocks",
        "big-artifact",
    }
)

MODELS: tuple[str, ...] = (
    "anthropic/claude-sonnet-4-6",
    "anthropic/claude-opus-4-1",
    "anthropic/claude-haiku-4-5",
    "openai/gpt-5",
    "openai/gpt-4.1-mini",
    "google/gemini-2.5-pro",
    "perplexity/sonar-pro",
)

HOSTILE_NAMES: tuple[str, ...] = (
    "../../x.docx",
    "/etc/passwd",
    "nul\x00byte.xlsx",
    "ctrl\x01\x1b[31mred\x07\r\nname.pptx",
    "A" * 4995 + ".html",
    "invoice\u202excod.exe.png",
    "📊 Quarterly résumé 🚀.docx",
    "..\\..\\windows\\system32\\drivers.docx",
    "..",
    "CON.xlsx",
)

HUGE_CONTENT_BYTES = 20 * 1024 * 1024
MANY_BLOCKS = 20_000
DEEP_TASK_LEVELS = 5_000
ODD_SOURCES_BIG = 10_000
BAD_UTF8_MARKER = "@@SIM-BAD-UTF8@@"
BAD_UTF8_BYTES = b"caf\xe9 \xff\xfe \xc3\x28 \xed\xa0\x80 \xf0\x28\x8c\x28"
"""Latin-1 e-acute, invalid lead bytes, broken 2- and 4-byte sequences, an encoded surrogate."""

_TEXT_TYPES = ("text-block", "list-block", "prompt-block", "table-block")
_SOURCE_LAYER = ("web-block", "yt-block")
_RESEARCH_LAYER = (
    "web-research-block",
    "deep-research-block",
    "prompt-block",
    "table-block",
    "list-block",
    "text-block",
)


@dataclass(frozen=True)
class Upload:
    """One uploaded file, exactly as received."""

    name: str
    content_type: str
    data: bytes

    @property
    def is_image(self) -> bool:
        """Images become image-blocks, everything else file-blocks (docs/spine-api.md 2.1)."""
        lower = self.name.lower()
        ext = lower[lower.rfind(".") :] if "." in lower else ""
        ctype = self.content_type.split(";")[0].strip().lower()
        return ext in IMAGE_EXTENSIONS or ctype in IMAGE_CONTENT_TYPES


@dataclass(frozen=True)
class RunContext:
    """Everything generation depends on; the same context always yields the same canvas."""

    seed_prefix: str
    prompt: str
    template: str
    blocks: tuple[str, ...] | None
    uploads: tuple[Upload, ...]
    outcome: str
    scenarios: frozenset[str]
    canvas_id: str
    size_scale: float = 1.0
    big_artifact_bytes: int = 200 * 1024 * 1024
    huge_content_bytes: int = HUGE_CONTENT_BYTES

    def rng(self, part: str) -> random.Random:
        """An RNG dedicated to one aspect of the run (order of generation never matters)."""
        return random.Random(f"{self.seed_prefix}:{part}")


@dataclass
class Node:
    """One canvas block."""

    index: int
    id: str
    name: str
    type: str
    final_status: str
    artifact_type: str | None = None
    artifact_name: str | None = None
    upload: int | None = None
    external_url: str | None = None
    big: bool = False
    content: str | None = None
    sources: list[Any] = field(default_factory=list)
    target_bytes: int = 0
    extra: dict[str, Any] | None = None


@dataclass
class Task:
    """One task of the tree; ``pre``/``post`` are DFS orders used for mid-run views."""

    index: int
    task_id: str
    name: str
    task_type: str
    final_status: str
    parent: int
    children: list[int] = field(default_factory=list)
    leaf_style: str = "null"
    extra: dict[str, Any] | None = None
    pre: int = 0
    post: int = 0


@dataclass
class Plan:
    """The generated canvas of one run."""

    canvas_id: str
    canvas_name: str
    template_used: str
    nodes: list[Node]
    edges: list[tuple[int, int]]
    edge_extra: list[dict[str, Any] | None]
    tasks: list[Task]
    roots: list[int]
    errors: list[dict[str, Any]]
    models_used: list[str]
    credits: int
    task_index: dict[str, int]
    final_output: str | None = None
    filled: bool = False
    bad_utf8_node: int | None = None

    @property
    def artifact_nodes(self) -> list[Node]:
        """Completed nodes that produced a downloadable artifact, in canvas order."""
        return [n for n in self.nodes if n.artifact_type and n.final_status == "completed"]


def new_uuid(rng: random.Random) -> str:
    """A random-looking (version 4) UUID drawn from ``rng``."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# ----------------------------------------------------------------------------- plan


def _allowed_types(ctx: RunContext, rng: random.Random) -> tuple[list[str], str | None, str]:
    """(allowed generated block types, deliverable type, template_used)."""
    if ctx.blocks is not None:
        allowed = list(dict.fromkeys(ctx.blocks))
        outputs = [t for t in allowed if t in ARTIFACT_TYPE]
        return allowed, (outputs[0] if outputs else None), "custom"
    template = ctx.template
    if template == "auto":
        flavor = rng.choice(sorted(TEMPLATE_OUTPUT))
        extras = rng.sample(
            [
                "list-block",
                "deep-research-block",
                "prototype-block",
                "image-block",
                "web-research-block",
                "table-block",
            ],
            2,
        )
        allowed = sorted(TEMPLATE_BLOCKS[flavor] | set(extras))
        used = flavor if rng.random() < 0.7 else "auto"
        return allowed, TEMPLATE_OUTPUT[flavor], used
    return sorted(TEMPLATE_BLOCKS[template]), TEMPLATE_OUTPUT.get(template), template


def _pick(
    rng: random.Random, allowed: list[str], layer: tuple[str, ...], fallback: list[str]
) -> str:
    options = [t for t in layer if t in allowed]
    return rng.choice(options or fallback)


def _block_types(ctx: RunContext, rng: random.Random) -> tuple[list[str], str]:
    allowed, deliverable, template_used = _allowed_types(ctx, rng)
    generated = [t for t in allowed if t != "file-block"] or allowed
    if "many-blocks" in ctx.scenarios:
        cheap = (
            [t for t in _TEXT_TYPES if t in generated]
            or [t for t in generated if t not in ARTIFACT_TYPE]
            or ["prompt-block"]
        )
        types = [cheap[i % len(cheap)] for i in range(MANY_BLOCKS - 3)]
        outputs = [t for t in generated if t in ARTIFACT_TYPE]
        types += [outputs[i % len(outputs)] for i in range(3)] if outputs else []
        return types, template_used
    n = rng.randint(7, 28)
    n_sources = max(1, round(n * rng.uniform(0.15, 0.35)))
    artifact_types = [t for t in generated if t in ARTIFACT_TYPE]
    n_outputs = min(rng.choice((1, 2, 2, 3, 3, 3, 4)), n - n_sources - 1) if artifact_types else 0
    types = []
    types += [_pick(rng, generated, _SOURCE_LAYER, generated) for _ in range(n_sources)]
    types += [
        _pick(
            rng,
            generated,
            _RESEARCH_LAYER,
            [t for t in generated if t not in ARTIFACT_TYPE] or generated,
        )
        for _ in range(n - n_sources - n_outputs)
    ]
    outputs = []
    if n_outputs:
        outputs.append(deliverable if deliverable in artifact_types else rng.choice(artifact_types))
        outputs += [rng.choice(artifact_types) for _ in range(n_outputs - 1)]
    types += outputs
    if ctx.blocks is not None:  # every requested type appears at least once
        missing = [t for t in generated if t not in types]
        types += missing
    return types, template_used


def _node_name(
    rng: random.Random, block_type: str, topic: str, stem: str, counter: int
) -> tuple[str, str | None]:
    """(display name, artifact filename or None)."""
    tt = title_case(topic)
    aspect = rng.choice(ASPECTS)
    names = {
        "web-block": f"{rng.choice(COMPANIES)} — {aspect} coverage",
        "yt-block": f"Video: {tt} explained",
        "web-research-block": f"Browse: {topic} {aspect}",
        "deep-research-block": f"Deep research: {tt}",
        "prompt-block": f"Analysis: {aspect.capitalize()}",
        "table-block": f"Table: {aspect} comparison",
        "list-block": f"Key {aspect} takeaways",
        "text-block": f"Notes on {aspect}",
        "file-block": "Reference file",
        "image-block": f"Hero image: {tt}",
        "document-block": f"{tt} Report",
        "memo-block": f"{tt} Memo",
        "excel-block": f"{tt} Model",
        "presentation-block": f"{tt} Deck",
        "app-block": f"{tt} App",
        "prototype-block": f"{tt} Prototype",
        "landing-page-block": f"{tt} Landing Page",
    }
    name = names.get(block_type, f"{block_type} {counter}")
    kind = ARTIFACT_TYPE.get(block_type)
    if kind is None:
        return name, None
    suffix = {
        "document-block": "Report",
        "memo-block": "Memo",
        "excel-block": "Model",
        "presentation-block": "Deck",
        "app-block": "App",
        "prototype-block": "Prototype",
        "landing-page-block": "Landing_Page",
        "image-block": "Hero",
    }[block_type]
    extra = f"_{counter}" if counter > 1 else ""
    return name, f"{stem}_{suffix}{extra}.{kind}"


def build_plan(ctx: RunContext) -> Plan:
    """Blocks, edges, tasks, errors and credits of a run (no markdown yet)."""
    rng = ctx.rng("plan")
    topic = topic_of(ctx.prompt)
    stem = file_stem(topic)
    scen = ctx.scenarios
    canvas_name = clean_prompt(ctx.prompt) or "Untitled canvas"
    if len(canvas_name) > 80:
        canvas_name = canvas_name[:79].rstrip() + "…"
    if "hostile-names" in scen:
        canvas_name = "../../canvas\x00name \u202eevil"
    types, template_used = _block_types(ctx, rng)

    nodes: list[Node] = []
    for i, upload in enumerate(ctx.uploads):
        nodes.append(
            Node(
                len(nodes),
                new_uuid(rng),
                upload.name,
                "image-block" if upload.is_image else "file-block",
                "completed",
                upload=i,
            )
        )
    counters: dict[str, int] = {}
    many = "many-blocks" in scen
    for block_type in types:
        counters[block_type] = counters.get(block_type, 0) + 1
        if many and block_type not in ARTIFACT_TYPE:
            name, artifact = (
                f"{block_type.removesuffix('-block').title()} {counters[block_type]}",
                None,
            )
        else:
            name, artifact = _node_name(rng, block_type, topic, stem, counters[block_type])
        node = Node(len(nodes), new_uuid(rng), name, block_type, "completed")
        if artifact:
            node.artifact_type, node.artifact_name = ARTIFACT_TYPE[block_type], artifact
        nodes.append(node)

    if "hostile-names" in scen:
        _add_hostile(rng, nodes, types)
    if "big-artifact" in scen:
        nodes.append(
            Node(
                len(nodes),
                new_uuid(rng),
                "Hero render (full resolution)",
                "image-block",
                "completed",
                artifact_type="png",
                artifact_name=f"{stem}_Hero_Full.png",
                big=True,
            )
        )
    if "duplicate-blocks" in scen:
        _add_duplicate(rng, nodes)

    errors = _apply_outcome(ctx, rng, nodes)
    edges = _edges(rng, nodes, len(ctx.uploads))
    tasks, roots = _tasks(ctx, rng, nodes, topic)
    edge_extra: list[dict[str, Any] | None] = [None] * len(edges)
    if "unknown-fields" in scen:
        edge_extra = [{"kind": "derived_from", "weight": round(rng.random(), 2)} for _ in edges]
    models = rng.sample(MODELS, rng.randint(1, 3))
    done = sum(1 for n in nodes if n.final_status == "completed")
    credits = (
        sum(rng.randint(3, 25) for _ in range(min(done, 200)))
        + len(tasks) // 4
        + rng.randint(5, 40)
    )
    if ctx.outcome == "failed":
        credits = rng.randint(1, 30)
    return Plan(
        canvas_id=ctx.canvas_id,
        canvas_name=canvas_name,
        template_used=template_used,
        nodes=nodes,
        edges=edges,
        edge_extra=edge_extra,
        tasks=tasks,
        roots=roots,
        errors=errors,
        models_used=models,
        credits=credits,
        task_index={t.task_id: t.index for t in tasks},
    )


def _add_hostile(rng: random.Random, nodes: list[Node], types: list[str]) -> None:
    """Artifact (and other) blocks named like path traversal, NULs, RTL overrides, 5,000 chars."""
    kinds = ["docx", "xlsx", "pptx", "html", "png"]
    by_kind = {
        "docx": "document-block",
        "xlsx": "excel-block",
        "pptx": "presentation-block",
        "html": "app-block",
        "png": "image-block",
    }
    for i, name in enumerate(HOSTILE_NAMES):
        kind = kinds[i % len(kinds)]
        nodes.append(
            Node(
                len(nodes),
                new_uuid(rng),
                name,
                by_kind[kind],
                "completed",
                artifact_type=kind,
                artifact_name=name,
            )
        )
    for node in nodes:
        if node.artifact_type is None and node.upload is None and rng.random() < 0.5:
            node.name = rng.choice(HOSTILE_NAMES)


def _add_duplicate(rng: random.Random, nodes: list[Node]) -> None:
    """Insert a second node sharing the id of an existing non-artifact node."""
    candidates = [n for n in nodes if n.artifact_type is None and n.upload is None] or nodes
    original = rng.choice(candidates)
    twin = Node(0, original.id, original.name + " (revised)", original.type, "completed")
    nodes.insert(original.index + 1, twin)
    for i, node in enumerate(nodes):
        node.index = i


def _apply_outcome(ctx: RunContext, rng: random.Random, nodes: list[Node]) -> list[dict[str, Any]]:
    work = [n for n in nodes if n.upload is None and not n.big]
    if ctx.outcome == "partial" and work:
        safe = [n for n in work if not n.artifact_type] or work
        failing = rng.sample(safe, min(len(safe), rng.randint(1, 3)))
        errors: list[dict[str, Any]] = []
        for node in failing:
            node.final_status = "error"
            recoverable = rng.random() < 0.6
            message = rng.choice(
                [
                    f"Block execution failed: timeout after {rng.randint(60, 600)}s",
                    "Tool call web_search returned HTTP 503",
                    f"Content policy check failed for block '{node.name[:60]}'",
                    "Model output could not be parsed as a table",
                ]
            )
            errors.append(
                {
                    "error": message,
                    "block_id": node.id,
                    "block_type": node.type,
                    "recoverable": recoverable,
                }
            )
        if rng.random() < 0.1:
            errors.append({"error": "Some sources could not be retrieved"})
        return errors
    if ctx.outcome == "failed":
        errors = [{"error": "Agent execution failed"}]
        if work:
            cut = rng.randrange(len(work))
            work[cut].final_status = "error"
            for node in work[cut + 1 :]:
                node.final_status = "idle"
            if rng.random() < 0.6:
                errors.append(
                    {
                        "error": f"Block '{work[cut].name[:60]}' crashed: upstream model error",
                        "block_id": work[cut].id,
                        "block_type": work[cut].type,
                        "recoverable": False,
                    }
                )
        return errors
    return []


def _edges(rng: random.Random, nodes: list[Node], n_uploads: int) -> list[tuple[int, int]]:
    """Edges only point from earlier to later nodes, so the graph is acyclic by construction."""
    edges: list[tuple[int, int]] = []
    seen: set[tuple[str, str]] = set()
    first_derived = n_uploads + 1
    for node in nodes:
        i = node.index
        if i < first_derived or node.type in _SOURCE_LAYER or node.upload is not None:
            continue
        for parent in rng.sample(range(i), min(i, rng.randint(1, 3))):
            key = (nodes[parent].id, node.id)
            if key in seen or nodes[parent].id == node.id:
                continue
            seen.add(key)
            edges.append((parent, i))
    return edges


_PERSONAS = (
    "Research Analyst",
    "Data Analyst",
    "Editor",
    "Fact Checker",
    "Designer",
    "Financial Analyst",
    "Strategist",
    "Librarian",
)
_PHASES = (
    "Plan the canvas",
    "Gather sources",
    "Analyse findings",
    "Build tables",
    "Draft deliverables",
    "Review and polish",
)


def _tasks(
    ctx: RunContext, rng: random.Random, nodes: list[Node], topic: str
) -> tuple[list[Task], list[int]]:
    tasks: list[Task] = []

    def add(name: str, task_type: str, status: str, parent: int) -> int:
        roll = rng.random()
        style = "null" if roll < 0.4 else "empty" if roll < 0.8 else "absent"
        task = Task(len(tasks), new_uuid(rng), name, task_type, status, parent, leaf_style=style)
        tasks.append(task)
        if parent >= 0:
            tasks[parent].children.append(task.index)
        return task.index

    work = [n for n in nodes if n.upload is None][:400]
    n_roots = max(2, min(6, math.ceil(len(work) / 5)))
    slices = [work[i::n_roots] for i in range(n_roots)]
    roots: list[int] = []
    failed_seen = False
    for r, slice_nodes in enumerate(slices):
        if failed_seen:
            break  # a failed run never spawned the later phases
        root = add(f"{_PHASES[r % len(_PHASES)]}: {topic}", "parent-task", "completed", -1)
        roots.append(root)
        broken = [n for n in slice_nodes if n.final_status == "error"]
        for p in range(rng.randint(1, 3)):
            persona = add(
                f"{rng.choice(_PERSONAS)} — {rng.choice(ASPECTS)}",
                "persona-task",
                "completed",
                root,
            )
            for _ in range(rng.randint(1, 4)):
                tools = ("web_search", "fetch_url", "python", "summarise") + (
                    ("read_file",) if ctx.uploads else ()
                )
                tool = rng.choice(tools)
                arg = {
                    "web_search": f'"{topic} {rng.choice(ASPECTS)}"',
                    "fetch_url": web_url(rng, topic),
                    "python": "compute growth table",
                    "read_file": ctx.uploads[0].name if ctx.uploads else "notes.md",
                    "summarise": f"{rng.randint(3, 12)} sources",
                }[tool]
                add(f"{tool}: {arg}", "tool-call-task", "completed", persona)
            owned = [n for n in slice_nodes[p::3] if n.final_status != "idle"]
            for node in owned[:6]:
                status = "error" if node.final_status == "error" else "completed"
                add(f"write_block: {node.name[:200]}", "tool-call-task", status, persona)
                if status == "error":
                    tasks[persona].final_status = "error"
        if broken:
            tasks[root].final_status = "error"
            failed_seen = ctx.outcome == "failed"
    if "deep-tasks" in ctx.scenarios:
        root = add("Recursive decomposition", "parent-task", "completed", -1)
        roots.append(root)
        parent = add("Planner — deep decomposition", "persona-task", "completed", root)
        for level in range(DEEP_TASK_LEVELS - 2):
            parent = add(f"sub-step {level + 1}", "tool-call-task", "completed", parent)
    if "unknown-fields" in ctx.scenarios:
        for task in tasks:
            task.extra = {
                "started_at": "2026-04-01T10:00:00Z",
                "tokens_used": rng.randint(100, 9000),
                "agent": {"model": rng.choice(MODELS), "temperature": 0.2},
            }
    _number(tasks, roots)
    return tasks, roots


def _number(tasks: list[Task], roots: list[int]) -> None:
    """Assign pre-order and post-order numbers iteratively (trees can be 5,000 deep)."""
    pre = post = 0
    stack: list[tuple[int, bool]] = [(r, False) for r in reversed(roots)]
    while stack:
        index, done = stack.pop()
        if done:
            tasks[index].post = post
            post += 1
            continue
        tasks[index].pre = pre
        pre += 1
        stack.append((index, True))
        stack.extend((c, False) for c in reversed(tasks[index].children))


# ----------------------------------------------------------------------------- content


def fill_content(plan: Plan, ctx: RunContext) -> None:
    """Markdown, sources, artifact sizes and the final output (idempotent)."""
    if plan.filled:
        return
    rng = ctx.rng("content")
    topic = topic_of(ctx.prompt)
    writer = Writer(rng, topic)
    scen = ctx.scenarios
    odd_rate = 0.6 if "odd-sources" in scen else 0.05
    many = "many-blocks" in scen
    for node in plan.nodes:
        if node.final_status == "idle":
            continue
        if node.final_status == "error":
            node.content = None if rng.random() < 0.5 else f"⚠️ {writer.sentence()}"
            continue
        if node.upload is not None:
            _fill_upload(node, ctx.uploads[node.upload])
        elif many and node.artifact_type is None:
            node.content = f"{node.name}: {writer.sentence()}"
            if node.type in _SOURCE_LAYER:
                node.sources = [web_source(rng, topic)]
        else:
            _fill_node(node, writer, rng, topic, odd_rate)
        if node.artifact_type:
            size = math.exp(rng.gauss(math.log(45_000), 0.8))
            node.target_bytes = int(min(200_000, max(5_000, size)) * ctx.size_scale)
            if node.big:
                node.target_bytes = ctx.big_artifact_bytes
    completed = [n for n in plan.nodes if n.final_status == "completed" and n.upload is None]
    if "odd-sources" in scen and completed:
        research = [n for n in completed if n.type not in ARTIFACT_TYPE] or completed
        research[0].sources = [
            odd_source(rng, topic) if i % 2 else web_source(rng, topic)
            for i in range(ODD_SOURCES_BIG)
        ]
        for node in completed[1:6]:
            node.sources = [None, "plain string source", [1, [2, [3]]], {"deep": {"er": [{}]}}]
    text_nodes = [n for n in completed if n.artifact_type is None]
    if "huge-content" in scen and (text_nodes or completed):
        target = (text_nodes or completed)[0]
        target.content = _huge_text(topic, ctx.huge_content_bytes)
    if "bad-utf8" in scen and (text_nodes or completed):
        target = (text_nodes or completed)[-1]
        target.content = f"Encoding test — {BAD_UTF8_MARKER} — end of block."
        plan.bad_utf8_node = target.index
    if "unknown-fields" in scen:
        for node in plan.nodes:
            node.extra = {
                "position": {"x": rng.randint(0, 4000), "y": rng.randint(0, 3000)},
                "created_at": "2026-04-01T10:00:00Z",
                "tags": ["sim", node.type],
            }
    if ctx.outcome != "failed":
        plan.final_output = _final_output(plan, writer, ctx)
    plan.filled = True


def _fill_upload(node: Node, upload: Upload) -> None:
    size = len(upload.data)
    if node.type == "image-block":
        node.content = f"Uploaded image {upload.name} ({size} bytes)."
    else:
        text = None
        if not upload.content_type.startswith(("image/", "application/zip", "application/pdf")):
            try:
                text = upload.data[:2000].decode("utf-8")
            except UnicodeDecodeError:
                text = None
        node.content = f"Indexed file {upload.name} ({size} bytes, {upload.content_type})."
        if text:
            node.content += "\n\n" + text[:500]
    node.sources = [
        {"file_name": upload.name, "size_bytes": size, "content_type": upload.content_type}
    ]


def _fill_node(node: Node, writer: Writer, rng: random.Random, topic: str, odd_rate: float) -> None:
    t = node.type
    if t == "web-block":
        source = web_source(rng, topic)
        node.external_url = source["url"]
        node.content = writer.quirks(writer.paragraph(3, 7) + "\n\n" + writer.paragraph())
        node.sources = [source]
    elif t == "yt-block":
        video = "".join(
            rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
            for _ in range(11)
        )
        node.external_url = f"https://www.youtube.com/watch?v={video}"
        node.content = writer.quirks("Transcript summary:\n\n" + writer.bullets())
        node.sources = [
            {
                "url": node.external_url,
                "title": f"{title_case(topic)} explained",
                "channel": rng.choice(COMPANIES),
                "duration_s": rng.randint(120, 3600),
            }
        ]
    elif t == "web-research-block":
        node.content = writer.quirks(writer.document(f"Findings: {topic}", rng.randint(800, 2500)))
        node.sources = sources_for(rng, topic, rng.randint(3, 10), odd_rate)
    elif t == "deep-research-block":
        node.content = writer.quirks(
            writer.document(f"Deep research: {title_case(topic)}", rng.randint(2000, 4000))
        )
        node.sources = sources_for(rng, topic, rng.randint(5, 15), odd_rate)
    elif t == "prompt-block":
        node.content = writer.quirks(writer.document(node.name, rng.randint(400, 2000)))
        if rng.random() < 0.5:
            node.sources = sources_for(rng, topic, rng.randint(1, 4), odd_rate)
    elif t == "table-block":
        node.content = writer.quirks(writer.table() if rng.random() < 0.7 else writer.json_table())
    elif t == "list-block":
        node.content = writer.quirks(writer.bullets(4, 9))
    elif t == "text-block":
        node.content = writer.quirks(writer.paragraph(1, 3))
    elif t == "file-block":
        node.content = "Reference file placeholder (no upload)."
    elif t == "image-block":
        node.content = (
            f"Prompt: an editorial illustration about {topic}, {rng.choice(NON_ASCII)} accents."
        )
    elif t in ("app-block", "prototype-block", "landing-page-block"):
        node.content = writer.quirks(
            writer.document(node.name, rng.randint(400, 1200))
            + f'\n\n```html\n<section class="hero"><h1>{title_case(topic)}</h1></section>\n```'
        )
    else:  # document, memo, excel, presentation
        node.content = writer.quirks(writer.document(node.name, rng.randint(800, 3000)))


def _huge_text(topic: str, target_bytes: int = HUGE_CONTENT_BYTES) -> str:
    head = f"# Huge block — {topic} — café 日本語 🚀\n\n"
    line = "Line {:07d}: " + ("lorem ipsum dolor sit amet " * 3) + "\n"
    size = len(head.encode("utf-8"))
    parts = [head]
    i = 0
    while size < target_bytes:
        text = line.format(i)
        parts.append(text)
        size += len(text)
        i += 1
    text = "".join(parts)
    excess = size - target_bytes
    return text[: len(text) - excess] if excess else text


def _final_output(plan: Plan, writer: Writer, ctx: RunContext) -> str:
    rng = writer.rng
    lines = [
        f"# {plan.canvas_name}",
        "",
        writer.paragraph(2, 4),
        "",
        "## Key findings",
        "",
        writer.bullets(3, 6),
    ]
    deliverables = [n.artifact_name for n in plan.artifact_nodes if n.artifact_name is not None]
    if deliverables:
        lines += ["", "## Deliverables", ""] + [f"- {name[:120]}" for name in deliverables[:20]]
    if ctx.outcome == "partial":
        lines += [
            "",
            "## Caveats",
            "",
            f"{len(plan.errors)} block(s) failed; results are incomplete.",
        ]
    if rng.random() < 0.3:
        lines += ["", writer.table()]
    return writer.quirks("\n".join(lines))
