"""Typed, tolerant views over Spine payloads.

Unlike spine-sdk's pydantic models, these never reject, strip or drop anything: each view
wraps the parsed JSON it came from (`.data`) and the exact text (`.response.data_text`),
and its properties return None for missing or wrongly typed fields. Unknown run statuses
are kept as strings; `is_terminal` is False for them, so they are polled again rather
than crashing anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from spine_pipeline.spine.envelope import ApiResponse

TERMINAL_STATUSES = frozenset({"completed", "partial", "failed"})
TEMPLATES = ("app", "auto", "deep_research", "excel", "landing_page", "memo", "report", "slides")
BLOCK_TYPES = (
    "prompt-block",
    "list-block",
    "memo-block",
    "document-block",
    "excel-block",
    "deep-research-block",
    "image-block",
    "presentation-block",
    "app-block",
    "table-block",
    "prototype-block",
    "landing-page-block",
    "text-block",
    "web-block",
    "yt-block",
    "web-research-block",
    "file-block",
)
CANVAS_URL = "https://app.getspine.ai/canvas/{canvas_id}"


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def canvas_url(canvas_id: str | None) -> str | None:
    return CANVAS_URL.format(canvas_id=canvas_id) if canvas_id else None


@dataclass(frozen=True, eq=False)
class _View:
    response: ApiResponse

    @property
    def data(self) -> dict[str, Any]:
        return _dict(self.response.data)


class CreatedRun(_View):
    """The answer to POST /v1/run."""

    @property
    def run_id(self) -> str:
        run_id = _str(self.data.get("run_id"))
        if not run_id:  # checked by the client before this view is built
            raise ValueError("create response has no run_id")
        return run_id

    @property
    def status(self) -> str | None:
        return _str(self.data.get("status"))

    @property
    def canvas_id(self) -> str | None:
        return _str(self.data.get("canvas_id"))

    @property
    def estimated_duration_ms(self) -> int | None:
        return _int(self.data.get("estimated_duration_ms"))


@dataclass(frozen=True)
class ArtifactRef:
    """One entry of `result.artifacts`; `download_url` is pre-signed and expires."""

    id: str | None
    type: str | None
    name: str | None
    download_url: str | None
    size_bytes: int | None
    raw: dict[str, Any]


@dataclass(frozen=True)
class Progress:
    tasks_completed: int | None
    tasks_total: int | None
    elapsed_ms: int | None


class Run(_View):
    """The answer to GET /v1/run/{id}."""

    @property
    def run_id(self) -> str | None:
        return _str(self.data.get("run_id"))

    @property
    def status(self) -> str | None:
        return _str(self.data.get("status"))

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def canvas_id(self) -> str | None:
        return _str(self.data.get("canvas_id"))

    @property
    def duration_ms(self) -> int | None:
        return _int(self.data.get("duration_ms"))

    @property
    def progress(self) -> Progress | None:
        p = self.data.get("progress")
        if not isinstance(p, dict):
            return None
        return Progress(
            _int(p.get("tasks_completed")), _int(p.get("tasks_total")), _int(p.get("elapsed_ms"))
        )

    @property
    def final_output(self) -> str | None:
        return _str(_dict(self.data.get("result")).get("final_output"))

    @property
    def artifacts(self) -> list[ArtifactRef]:
        out = []
        for item in _list(_dict(self.data.get("result")).get("artifacts")):
            a = _dict(item)
            out.append(
                ArtifactRef(
                    id=_str(a.get("id")),
                    type=_str(a.get("type")),
                    name=_str(a.get("name")),
                    download_url=_str(a.get("download_url")),
                    size_bytes=_int(a.get("size_bytes")),
                    raw=a,
                )
            )
        return out

    @property
    def metadata(self) -> dict[str, Any]:
        return _dict(self.data.get("metadata"))

    @property
    def credits_consumed(self) -> int | None:
        return _int(self.metadata.get("credits_consumed"))

    @property
    def template_used(self) -> str | None:
        return _str(self.metadata.get("template_used"))

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [_dict(e) for e in _list(self.data.get("errors"))]

    @property
    def error_messages(self) -> list[str]:
        return [m for m in (_str(e.get("error")) for e in self.errors) if m]


class CanvasDAG(_View):
    """The answer to GET /v1/canvas/{id}/dag."""

    @property
    def canvas_id(self) -> str | None:
        return _str(self.data.get("canvas_id"))

    @property
    def canvas_name(self) -> str | None:
        return _str(self.data.get("canvas_name"))

    @property
    def nodes(self) -> list[dict[str, Any]]:
        return [_dict(n) for n in _list(self.data.get("nodes"))]

    @property
    def edges(self) -> list[dict[str, Any]]:
        return [_dict(e) for e in _list(self.data.get("edges"))]


class TaskTree(_View):
    """The answer to GET /v1/canvas/{id}/tasks: two forests of nested task objects."""

    @property
    def canvas_id(self) -> str | None:
        return _str(self.data.get("canvas_id"))

    def walk(self) -> Iterator[tuple[str, int, dict[str, Any]]]:
        """Yield (subtree, depth, task) in preorder without recursion (trees can be deep)."""
        for subtree in ("completed", "not_completed"):
            stack = [(0, _dict(t)) for t in reversed(_list(self.data.get(subtree)))]
            while stack:
                depth, task = stack.pop()
                yield subtree, depth, task
                stack.extend((depth + 1, _dict(c)) for c in reversed(_list(task.get("children"))))


class Task(_View):
    """The answer to GET /v1/canvas/{id}/tasks/{task_id}."""

    @property
    def task_id(self) -> str | None:
        return _str(self.data.get("task_id"))

    @property
    def status(self) -> str | None:
        return _str(self.data.get("status"))

    @property
    def children(self) -> list[dict[str, Any]]:
        return [_dict(c) for c in _list(self.data.get("children"))]
