"""The task tree to `tasks` rows, at any depth.

Both forests (`completed`, then `not_completed`) are walked in preorder with an explicit
stack, so a tree thousands of levels deep costs no recursion. `ordinal` is the preorder
position; `parent_ordinal` and `root_ordinal` rebuild the tree even when task ids repeat or
are missing. Each task's `children` array is cut out of its `raw_json` (each child is a row
of its own), which keeps deep trees linear in size.
"""

from __future__ import annotations

from typing import Any

from spine_pipeline.archive.flatten.columns import Cols
from spine_pipeline.archive.flatten.slicing import SourceDoc, last_index, set_raw
from spine_pipeline.archive.flatten.values import Buffer, as_str
from spine_pipeline.spine.rawjson import Span

__all__ = ["flatten_tasks"]


def flatten_tasks(doc: SourceDoc, tasks: Cols) -> tuple[str | Buffer, bytes | None]:
    """Preorder rows of both task forests; returns the tree-level tasks_raw_json."""
    root, value = doc.span, doc.value
    forests: list[tuple[str, list[tuple[Any, Span]]]] = []
    if isinstance(value, dict):
        for subtree in ("completed", "not_completed"):
            i = last_index(root, subtree)
            if i is not None and isinstance(value[subtree], list):
                sp = root.members[i][2]  # type: ignore[index]
                doc.remove(root, i)
                forests.append((subtree, list(zip(value[subtree], sp.items or [], strict=True))))

    # entry: value, span, subtree, depth, parent_ordinal, parent_task_id, root_ordinal, root_id
    stack: list[tuple[Any, Span, str, int, int | None, str | None, int | None, str | None]] = []
    for subtree, items in reversed(forests):
        for v, sp in reversed(items):
            stack.append((v, sp, subtree, 0, None, None, None, None))
    row_spans: list[Span] = []
    ordinal = 0
    while stack:
        v, sp, subtree, depth, parent_ord, parent_id, root_ord, root_id = stack.pop()
        node = v if isinstance(v, dict) else {}
        task_id = as_str(node.get("task_id"))
        if root_ord is None:
            root_ord, root_id = ordinal, task_id
        child_count = 0
        i = last_index(sp, "children") if node else None
        if i is not None and isinstance(node["children"], list):
            csp = sp.members[i][2]  # type: ignore[index]
            doc.remove(sp, i)
            kids = node["children"]
            child_count = len(kids)
            for kv, ks in zip(reversed(kids), reversed(csp.items or []), strict=True):
                stack.append((kv, ks, subtree, depth + 1, ordinal, task_id, root_ord, root_id))
        tasks.add(
            task_id=task_id,
            parent_task_id=parent_id,
            root_task_id=root_id,
            depth=depth,
            name=as_str(node.get("name")),
            task_type=as_str(node.get("task_type")),
            status=as_str(node.get("status")),
            subtree=subtree,
            ordinal=ordinal,
            parent_ordinal=parent_ord,
            root_ordinal=root_ord,
            child_count=child_count,
        )
        row_spans.append(sp)
        ordinal += 1

    doc.finalize()
    set_raw(doc, tasks, row_spans)
    return doc.extract_all()
