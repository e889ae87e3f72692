"""The request catalog (`data/requests.yaml`): named Spine requests, validated up front.

Every mistake a person can make in the file is reported as one line naming the file, the
request and the field, before anything is submitted (a bad request costs nothing to
catch here, and credits to catch at Spine).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spine_pipeline.spine.client import UploadFile
from spine_pipeline.spine.models import BLOCK_TYPES, TEMPLATES

DEFAULT_CATALOG = Path("data/requests.yaml")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_ALLOWED_KEYS = {
    "name",
    "prompt",
    "template",
    "blocks",
    "agent_instructions",
    "files",
    "schedule",
    "description",
    "tags",
    "team",
    "enabled",
}
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_CRON_ALIASES = {"@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight"}
_CRON_ITEM = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?$")
#: A team name: what follows `team:` in the Dagster owner the submit asset gets.
_TEAM = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class CatalogError(ValueError):
    """The catalog file is unreadable or invalid; the message is one line."""


@dataclass(frozen=True)
class CatalogRequest:
    """One named request, ready to submit."""

    name: str
    prompt: str
    template: str = "auto"
    blocks: tuple[str, ...] | None = None
    agent_instructions: str | None = None
    files: tuple[Path, ...] = ()
    schedule: str | None = None
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    #: The team that owns the request (its submit asset's owner `team:<team>`); None: the
    #: project's default owner.
    team: str | None = None
    #: Whether the request's cron schedule starts running when the code location loads
    #: (False: it is created stopped and someone starts it in the UI or with the CLI).
    enabled: bool = False

    def uploads(self) -> list[UploadFile]:
        """The attached files as bytes (read at submit time, so edits are picked up)."""
        return [UploadFile.from_path(p) for p in self.files]

    @property
    def blocks_json(self) -> str | None:
        return json.dumps(list(self.blocks)) if self.blocks is not None else None


def _valid_cron(expr: str) -> bool:
    if expr.strip() in _CRON_ALIASES:
        return True
    fields = expr.split()
    if len(fields) != 5:
        return False
    for text, (low, high) in zip(fields, _CRON_RANGES, strict=True):
        for item in text.split(","):
            if not _CRON_ITEM.match(item):
                return False
            base = item.split("/")[0]
            if base != "*":
                bounds = [int(x) for x in base.split("-")]
                if any(b < low or b > high for b in bounds) or bounds != sorted(bounds):
                    return False
    return True


def _parse_entry(raw: Any, index: int, base_dir: Path, where: str) -> CatalogRequest:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: entry #{index + 1} must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise CatalogError(
            f"{where}: entry #{index + 1}: name must be lower_snake_case "
            f"(letters, digits, _; max 63), got {name!r}"
        )
    at = f"{where}: request {name!r}"
    unknown = sorted(set(raw) - _ALLOWED_KEYS)
    if unknown:
        raise CatalogError(f"{at}: unknown field(s) {', '.join(unknown)}")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise CatalogError(f"{at}: prompt must be a non-empty string")
    template = raw.get("template", "auto")
    if template not in TEMPLATES:
        raise CatalogError(f"{at}: unknown template {template!r} (valid: {', '.join(TEMPLATES)})")
    blocks = raw.get("blocks")
    if blocks is not None:
        if not isinstance(blocks, list) or not blocks:
            raise CatalogError(f"{at}: blocks must be a non-empty list of block types")
        bad = [b for b in blocks if b not in BLOCK_TYPES]
        if bad:
            raise CatalogError(f"{at}: unknown block type(s) {', '.join(map(str, bad))}")
        blocks = tuple(blocks)
    instructions = raw.get("agent_instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise CatalogError(f"{at}: agent_instructions must be a string")
    files_raw = raw.get("files") or []
    if not isinstance(files_raw, list) or not all(isinstance(f, str) for f in files_raw):
        raise CatalogError(f"{at}: files must be a list of paths")
    files = []
    for f in files_raw:
        path = (base_dir / f).resolve()
        if not path.is_file():
            raise CatalogError(f"{at}: attached file not found: {f}")
        files.append(path)
    schedule = raw.get("schedule")
    if schedule is not None and (not isinstance(schedule, str) or not _valid_cron(schedule)):
        raise CatalogError(f"{at}: schedule must be a 5-field cron expression, got {schedule!r}")
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise CatalogError(f"{at}: description must be a string")
    tags = raw.get("tags") or {}
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise CatalogError(f"{at}: tags must map strings to strings")
    team = raw.get("team")
    if team is not None and (not isinstance(team, str) or not _TEAM.match(team)):
        raise CatalogError(
            f"{at}: team must be a lower-case name (letters, digits, _ . -; max 63), got {team!r}"
        )
    enabled = raw.get("enabled", False)
    if not isinstance(enabled, bool):
        raise CatalogError(f"{at}: enabled must be true or false, got {enabled!r}")
    if enabled and schedule is None:
        raise CatalogError(f"{at}: enabled: true needs a schedule (it starts the schedule)")
    return CatalogRequest(
        name=name,
        prompt=prompt,
        template=template,
        blocks=blocks,
        agent_instructions=instructions,
        files=tuple(files),
        schedule=schedule,
        description=description,
        tags=dict(tags),
        team=team,
        enabled=enabled,
    )


def load_catalog(path: str | Path = DEFAULT_CATALOG) -> list[CatalogRequest]:
    """Read and validate the catalog; files are resolved relative to the catalog's folder."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"{where}: catalog file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{where}: cannot read catalog ({exc})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise CatalogError(f"{where}: invalid YAML{line}: {problem}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("requests"), list):
        raise CatalogError(f"{where}: expected a top-level 'requests:' list")
    entries = [_parse_entry(r, i, path.parent, where) for i, r in enumerate(doc["requests"])]
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise CatalogError(f"{where}: duplicate request name {entry.name!r}")
        seen.add(entry.name)
    return entries
