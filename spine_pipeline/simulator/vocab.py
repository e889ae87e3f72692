"""Closed vocabularies of the public Spine API (docs/spine-api.md sections 3 and 4.2).

Kept in one place so validation messages, generation rules and tests agree on the exact strings.
"""

from __future__ import annotations

TEMPLATES: tuple[str, ...] = (
    "auto",
    "deep_research",
    "report",
    "slides",
    "memo",
    "excel",
    "app",
    "landing_page",
)

BLOCK_TYPES: tuple[str, ...] = (
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


def _blocks(*short: str) -> frozenset[str]:
    return frozenset(f"{name}-block" for name in short)


TEMPLATE_BLOCKS: dict[str, frozenset[str]] = {
    "auto": frozenset(BLOCK_TYPES),
    "deep_research": _blocks(
        "prompt", "table", "web", "web-research", "file", "yt", "memo", "text"
    ),
    "report": _blocks("prompt", "table", "web", "yt", "document", "text"),
    "slides": _blocks("prompt", "table", "web", "yt", "presentation", "text"),
    "memo": _blocks("prompt", "web", "yt", "memo", "text"),
    "excel": _blocks("prompt", "table", "web", "yt", "excel", "text"),
    "app": _blocks("prompt", "app", "text"),
    "landing_page": _blocks("prompt", "web", "image", "yt", "landing-page", "text"),
}
"""Template -> allowed block types (docs/spine-api.md 3.3)."""

TEMPLATE_OUTPUT: dict[str, str] = {
    "deep_research": "memo-block",
    "report": "document-block",
    "slides": "presentation-block",
    "memo": "memo-block",
    "excel": "excel-block",
    "app": "app-block",
    "landing_page": "landing-page-block",
}
"""The block type that carries each template's typical deliverable."""

ARTIFACT_TYPE: dict[str, str] = {
    "memo-block": "docx",
    "document-block": "docx",
    "excel-block": "xlsx",
    "presentation-block": "pptx",
    "app-block": "html",
    "prototype-block": "html",
    "landing-page-block": "html",
    "image-block": "png",
}
"""Block types whose completed nodes produce a downloadable artifact, and its type tag."""

CONTENT_TYPES: dict[str, str] = {
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "html": "text/html; charset=utf-8",
    "png": "image/png",
}

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg"})
IMAGE_CONTENT_TYPES: frozenset[str] = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml"}
)

TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "partial", "failed"})

MSG_MISSING_KEY = "X-API-KEY header required"
MSG_INVALID_KEY = "Invalid API key"
MSG_CREATE_500 = "An internal error occurred while creating the run"
MSG_INTERNAL = "An internal error occurred"
MSG_MISSING_PROMPT = "Missing required field: prompt"
MSG_BAD_BLOCKS_JSON = "Invalid blocks: must be a JSON-encoded array of block type strings"
MSG_EMPTY_BLOCKS = "Invalid blocks: must be a non-empty array of block types"
MSG_BAD_CONTENT_TYPE = "Content-Type must be multipart/form-data"


def invalid_template_message(value: str) -> str:
    """Exact 400 message for an unknown template (docs/spine-api.md 4.2)."""
    return f"Invalid template: {value}. Valid templates: {', '.join(sorted(TEMPLATES))}"


def invalid_blocks_message(bad: list[str]) -> str:
    """Exact 400 message for unknown block types (docs/spine-api.md 4.2, list in full)."""
    return (
        f"Invalid block types: {', '.join(bad)}. "
        f"Valid block types: {', '.join(sorted(BLOCK_TYPES))}"
    )


def invalid_uuid_message(param: str) -> str:
    """400 message for a malformed UUID path parameter (run_id, canvas_id, task_id)."""
    return f"Invalid {param}: must be a valid UUID"
