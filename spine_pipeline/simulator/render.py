"""Turn a generated :class:`~.content.Plan` into API payload dicts (run, DAG, task tree).

Mid-run views are derived from the final plan with a progress fraction ``f`` in [0, 1): nodes
complete in canvas order, tasks in post-order (a parent completes after its children) and appear
in pre-order, so ``tasks_total`` grows while the run is going. Every tree walk is iterative.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .content import Node, Plan, Task

Minter = Callable[[Node], str]


def task_thresholds(count: int, fraction: float | None) -> tuple[float, float]:
    """(visible pre-order bound, completed post-order bound); terminal = everything."""
    if fraction is None:
        return math.inf, math.inf
    visible = math.ceil(count * (0.25 + 0.75 * fraction))
    completed = math.floor(count * fraction * 0.97)
    return visible, completed


def progress(plan: Plan, fraction: float, elapsed_ms: int) -> dict[str, int]:
    """The ``progress`` object of a running run."""
    visible, completed = task_thresholds(len(plan.tasks), fraction)
    total = done = 0
    for task in plan.tasks:
        if task.post < completed:
            done += 1
            total += 1
        elif task.pre < visible:
            total += 1
    return {"tasks_completed": done, "tasks_total": total, "elapsed_ms": elapsed_ms}


def node_thresholds(count: int, fraction: float | None) -> tuple[int, int]:
    """(number of finished nodes, number of visible nodes)."""
    if fraction is None:
        return count, count
    done = math.floor(count * fraction)
    visible = max(min(count, done + 1), math.ceil(count * (0.3 + 0.7 * fraction)))
    return done, min(count, visible)


def node_dict(node: Node, status: str, mint: Minter, final: bool) -> dict[str, Any]:
    """One DAG node as served."""
    url: str | None = None
    if final and status == "completed":
        signed = node.artifact_type or node.upload is not None
        url = mint(node) if signed else node.external_url
    out: dict[str, Any] = {
        "id": node.id,
        "name": node.name,
        "type": node.type,
        "status": status,
        "content": node.content if final else None,
        "url": url,
        "sources": node.sources if final else [],
    }
    if node.extra:
        out.update(node.extra)
    return out


def dag(
    plan: Plan, fraction: float | None, mint: Minter, extra: dict[str, Any] | None
) -> dict[str, Any]:
    """``GET /v1/canvas/{id}/dag`` data (terminal when ``fraction`` is None)."""
    done, visible = node_thresholds(len(plan.nodes), fraction)
    nodes = []
    for node in plan.nodes[:visible]:
        if node.index < done:
            nodes.append(node_dict(node, node.final_status, mint, final=True))
        else:
            status = "running" if node.index < done + 2 else "idle"
            nodes.append(node_dict(node, status, mint, final=False))
    edges = []
    for (src, dst), edge_extra in zip(plan.edges, plan.edge_extra, strict=True):
        if dst < visible:
            edge = {"source_id": plan.nodes[src].id, "target_id": plan.nodes[dst].id}
            if edge_extra:
                edge.update(edge_extra)
            edges.append(edge)
    out: dict[str, Any] = {
        "canvas_id": plan.canvas_id,
        "canvas_name": plan.canvas_name,
        "nodes": nodes,
        "edges": edges,
    }
    if extra:
        out.update(extra)
    return out


def _task_status(task: Task, completed: float) -> str:
    return task.final_status if task.post < completed else "running"


def _task_head(task: Task, status: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "task_id": task.task_id,
        "name": task.name,
        "task_type": task.task_type,
        "status": status,
    }
    if task.extra:
        out.update(task.extra)
    return out


def _set_children(out: dict[str, Any], task: Task, children: list[dict[str, Any]]) -> None:
    if children or task.children:
        out["children"] = children
    elif task.leaf_style == "null":
        out["children"] = None
    elif task.leaf_style == "empty":
        out["children"] = []


def tasks(plan: Plan, fraction: float | None, extra: dict[str, Any] | None) -> dict[str, Any]:
    """``GET /v1/canvas/{id}/tasks`` data, built iteratively (any depth)."""
    visible, completed = task_thresholds(len(plan.tasks), fraction)
    rendered: dict[int, dict[str, Any]] = {}
    child_lists: dict[int, list[dict[str, Any]]] = {}
    order = sorted(plan.tasks, key=lambda t: t.pre)
    for task in order:
        if not (task.pre < visible or task.post < completed):
            continue
        if task.parent >= 0 and task.parent not in rendered:
            continue
        out = _task_head(task, _task_status(task, completed))
        rendered[task.index] = out
        child_lists[task.index] = []
        if task.parent >= 0:
            child_lists[task.parent].append(out)
    for index, out in rendered.items():
        _set_children(out, plan.tasks[index], child_lists[index])
    done_roots: list[dict[str, Any]] = []
    open_roots: list[dict[str, Any]] = []
    for root in plan.roots:
        if root not in rendered:
            continue
        out = rendered[root]
        (done_roots if out["status"] == "completed" else open_roots).append(out)
    result: dict[str, Any] = {
        "canvas_id": plan.canvas_id,
        "completed": done_roots,
        "not_completed": open_roots,
    }
    if extra:
        result.update(extra)
    return result


def task(plan: Plan, index: int, fraction: float | None) -> dict[str, Any] | None:
    """``GET /v1/canvas/{id}/tasks/{task_id}`` data: the task and its immediate children."""
    visible, completed = task_thresholds(len(plan.tasks), fraction)
    target = plan.tasks[index]

    def shown(t: Task) -> bool:
        return t.pre < visible or t.post < completed

    if not shown(target):
        return None
    out = _task_head(target, _task_status(target, completed))
    children = [
        _task_head(plan.tasks[c], _task_status(plan.tasks[c], completed))
        for c in target.children
        if shown(plan.tasks[c])
    ]
    _set_children(out, target, children)
    return out
