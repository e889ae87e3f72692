"""The canvas DAG as inline SVG: layered top to bottom, one node per block, one line per edge.

Layout is longest-path layering: a block sits one layer below the lowest of the blocks it
derives from, so every ordinary edge points down. Within a layer, blocks keep the DAG's own
node order (`ordinal`): stable, readable (Spine lists nodes in creation order) and cheap; no
crossing minimisation, which would cost time on 20,000 blocks and make the picture depend
on heuristics. A layer wider than `MAX_PER_ROW` wraps onto more rows, so the picture grows
down, not sideways, however many blocks a layer holds.

Spine's DAGs are acyclic, but the archive keeps whatever was received, so hostile data is
tolerated rather than trusted:

* **cycles**: Kahn's algorithm in node order; when no block is free, the first remaining one
  (by ordinal) is placed anyway and its edges from blocks not yet placed become *back edges*
  (drawn dashed, counted in the page);
* **dangling edges** (an end names no block) cannot be drawn and are counted and listed by
  the page; **self-loops** are drawn as a small loop;
* **duplicate block ids**: an edge end names the first block with that id (by ordinal).

Everything is iterative (no recursion on 20,000-block chains) and integer geometry, so the
same input gives the same bytes. Nodes are `<a class="node" href="#block-N">`: clicking one
jumps to the block's section below, which needs no script.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from spine_pipeline.evidence.text import attr, clip, esc, visible

__all__ = ["MAX_PER_ROW", "DagNode", "DagSvg", "Layering", "layer_dag", "render_dag_svg"]

#: Nodes per row before a layer wraps.
MAX_PER_ROW = 8
NODE_W = 180
NODE_H = 56
H_GAP = 16
ROW_GAP = 14
LAYER_GAP = 40
MARGIN = 12
#: Characters of a name/type shown inside a node (the full name, visible, is its tooltip).
LABEL_CHARS = 26
TITLE_CHARS = 300

#: Statuses with a colour of their own; any other (free-text) status is drawn as "other".
KNOWN_STATUSES = frozenset(
    {"completed", "running", "idle", "failed", "error", "errored", "partial", "pending"}
)


def status_class(status: str | None) -> str:
    """A CSS class for a free-text status: only known values become classes (no injection)."""
    value = (status or "").strip().lower()
    return f"s-{value}" if value in KNOWN_STATUSES else "s-other"


@dataclass(frozen=True)
class DagNode:
    """What a node shows: the block's type, name and status; `href` is its block's anchor."""

    node_id: str | None
    type: str | None
    name: str | None
    status: str | None
    href: str


@dataclass(frozen=True)
class Layering:
    """Layers of node indexes (each in index order) and how every edge was resolved.

    `ends[e]` is `(source index, target index)` or None for a dangling edge; `back` holds
    the indexes of edges that point up or sideways (they close a cycle, or are self-loops).
    """

    layer_of: tuple[int, ...]
    layers: tuple[tuple[int, ...], ...]
    ends: tuple[tuple[int, int] | None, ...]
    back: frozenset[int]


def layer_dag(
    node_ids: Sequence[str | None], edges: Sequence[tuple[str | None, str | None]]
) -> Layering:
    """Longest-path layers of the graph; cycles broken deterministically (module docstring)."""
    n = len(node_ids)
    index: dict[str, int] = {}
    for i, node_id in enumerate(node_ids):
        if node_id is not None:
            index.setdefault(node_id, i)
    ends: list[tuple[int, int] | None] = []
    out: list[list[tuple[int, int]]] = [[] for _ in range(n)]  # (edge index, target)
    indegree = [0] * n
    back: set[int] = set()
    for e, (src, dst) in enumerate(edges):
        s = index.get(src) if src is not None else None
        t = index.get(dst) if dst is not None else None
        if s is None or t is None:
            ends.append(None)
            continue
        ends.append((s, t))
        if s == t:
            back.add(e)
            continue
        out[s].append((e, t))
        indegree[t] += 1

    layer = [0] * n
    placed = [False] * n
    free = [i for i in range(n) if indegree[i] == 0]
    heapq.heapify(free)
    next_forced = 0
    for _ in range(n):
        while free and placed[free[0]]:
            heapq.heappop(free)
        if free:
            v = heapq.heappop(free)
        else:  # only cycles left: place the first unplaced node anyway
            while placed[next_forced]:
                next_forced += 1
            v = next_forced
        placed[v] = True
        for e, w in out[v]:
            if placed[w]:
                back.add(e)  # w came first: this edge closes a cycle
                continue
            layer[w] = max(layer[w], layer[v] + 1)
            indegree[w] -= 1
            if indegree[w] == 0:
                heapq.heappush(free, w)

    layers: list[list[int]] = [[] for _ in range(max(layer, default=-1) + 1)]
    for i in range(n):
        layers[layer[i]].append(i)
    return Layering(
        layer_of=tuple(layer),
        layers=tuple(tuple(nodes) for nodes in layers),
        ends=tuple(ends),
        back=frozenset(back),
    )


@dataclass(frozen=True)
class DagSvg:
    """The rendered SVG and what the page should say about edges it could not draw plainly."""

    svg: str
    layering: Layering
    width: int
    height: int

    @property
    def dangling(self) -> tuple[int, ...]:
        return tuple(e for e, ends in enumerate(self.layering.ends) if ends is None)


def _positions(layering: Layering) -> tuple[list[tuple[int, int]], int, int]:
    """Top-left corner of every node, and the picture's width and height."""
    n = len(layering.layer_of)
    pos = [(0, 0)] * n
    widest = min(max((len(nodes) for nodes in layering.layers), default=1), MAX_PER_ROW)
    width = 2 * MARGIN + widest * NODE_W + max(widest - 1, 0) * H_GAP
    y = MARGIN
    for nodes in layering.layers:
        for start in range(0, len(nodes), MAX_PER_ROW):
            row = nodes[start : start + MAX_PER_ROW]
            row_w = len(row) * NODE_W + (len(row) - 1) * H_GAP
            x = (width - row_w) // 2
            for i in row:
                pos[i] = (x, y)
                x += NODE_W + H_GAP
            y += NODE_H + ROW_GAP
        y += LAYER_GAP - ROW_GAP
    height = max(y - LAYER_GAP + MARGIN, 2 * MARGIN)
    return pos, width, height


def render_dag_svg(
    nodes: Sequence[DagNode], edges: Sequence[tuple[str | None, str | None]]
) -> DagSvg:
    """Inline SVG (no external reference, no script, no style attribute: CSS classes only)."""
    layering = layer_dag([n.node_id for n in nodes], edges)
    pos, width, height = _positions(layering)
    parts = [
        f'<svg id="dag" class="dag" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="canvas DAG: '
        f'{len(nodes)} blocks, {len(edges)} edges">'
    ]
    parts.append('<g class="edges">')
    for e, ends in enumerate(layering.ends):
        if ends is None:
            continue
        s, t = ends
        (sx, sy), (tx, ty) = pos[s], pos[t]
        if s == t:  # self-loop: a small arc on the node's right side
            x0, y0 = sx + NODE_W, sy + NODE_H // 3
            parts.append(
                f'<path class="edge back" data-edge="{e}" '
                f'd="M{x0} {y0} c24 0 24 {NODE_H // 3} 0 {NODE_H // 3}"/>'
            )
            continue
        cls = "edge back" if e in layering.back else "edge"
        parts.append(
            f'<line class="{cls}" data-edge="{e}" x1="{sx + NODE_W // 2}" y1="{sy + NODE_H}" '
            f'x2="{tx + NODE_W // 2}" y2="{ty}"/>'
        )
    parts.append("</g>")
    for i, node in enumerate(nodes):
        x, y = pos[i]
        name = visible(node.name) if node.name is not None else "(no name)"
        kind = visible(node.type) if node.type is not None else "(no type)"
        status = visible(node.status) if node.status is not None else "(no status)"
        title = f"{clip(name, TITLE_CHARS)} ({clip(kind, 80)}, {clip(status, 80)})"
        # A nested <svg> is a viewport: it clips labels wider than the node (wide glyphs).
        parts.append(
            f'<a class="node" href="{esc(node.href)}"><title>{attr(title)}</title>'
            f'<svg x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}">'
            f'<rect class="{status_class(node.status)}" x="0.5" y="0.5" width="{NODE_W - 1}" '
            f'height="{NODE_H - 1}" rx="5"/>'
            f'<text class="ty" x="8" y="15">{esc(clip(kind, LABEL_CHARS))}</text>'
            f'<text class="nm" x="8" y="32">{esc(clip(name, LABEL_CHARS))}</text>'
            f'<text class="st" x="8" y="48">{esc(clip(status, LABEL_CHARS))}</text>'
            "</svg></a>"
        )
    parts.append("</svg>")
    return DagSvg(svg="".join(parts), layering=layering, width=width, height=height)
