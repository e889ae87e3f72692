"""Form parsing for ``POST /v1/run`` with the standard library only.

Starlette's ``request.form()`` needs python-multipart, which is not a project dependency. The
Spine SDK sends multipart/form-data when files are attached and urlencoded otherwise, so both are
accepted. File bytes are kept exactly as sent (ground truth compares them byte for byte).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

_PARAM_RE = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
# httpx / browsers escape these inside quoted filenames (HTML5 multipart form encoding).
_HTML5_ESCAPES = re.compile(r"%(22|0[0-9A-Fa-f]|1[0-9A-Fa-f])")


@dataclass(frozen=True)
class FormPart:
    """One form field; ``filename`` is None for plain (non-file) fields."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None

    @property
    def text(self) -> str:
        """The field value decoded as UTF-8 (invalid bytes replaced)."""
        return self.data.decode("utf-8", errors="replace")


class FormError(ValueError):
    """The body is not a form we can read."""


def header_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``main; k=v; k2="v 2"`` into the main value and a lower-cased parameter dict."""
    main, _, _ = value.partition(";")
    params: dict[str, str] = {}
    for key, raw in _PARAM_RE.findall(value):
        raw = raw.strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params.setdefault(key.lower(), raw)
    return main.strip().lower(), params


def parse_form(content_type: str | None, body: bytes) -> list[FormPart]:
    """Parse a multipart/form-data or application/x-www-form-urlencoded body."""
    main, params = header_params(content_type or "")
    if main == "multipart/form-data":
        boundary = params.get("boundary")
        if not boundary:
            raise FormError("multipart/form-data without a boundary")
        return _parse_multipart(body, boundary.encode("latin-1"))
    if main in ("application/x-www-form-urlencoded", ""):
        if main == "" and body.strip():
            raise FormError("missing Content-Type")
        text = body.decode("utf-8", errors="replace")
        return [FormPart(k, v.encode()) for k, v in parse_qsl(text, keep_blank_values=True)]
    raise FormError(f"unsupported Content-Type {main}")


def _parse_multipart(body: bytes, boundary: bytes) -> list[FormPart]:
    delimiter = b"\r\n--" + boundary
    segments = (b"\r\n" + body).split(delimiter)
    parts: list[FormPart] = []
    for segment in segments[1:]:
        if segment.startswith(b"--"):
            break  # close delimiter; the rest is epilogue
        head_end = segment.find(b"\r\n\r\n")
        if head_end < 0:
            raise FormError("malformed multipart part (no header terminator)")
        raw_headers = segment[:head_end].lstrip(b" \t").removeprefix(b"\r\n")
        data = segment[head_end + 4 :]
        headers: dict[str, str] = {}
        for line in raw_headers.split(b"\r\n"):
            if b":" in line:
                key, _, value = line.partition(b":")
                headers[key.strip().lower().decode("latin-1")] = value.strip().decode(
                    "utf-8", errors="replace"
                )
        disposition, dparams = header_params(headers.get("content-disposition", ""))
        if disposition != "form-data" or "name" not in dparams:
            continue
        filename: str | None = None
        if "filename*" in dparams:
            charset, _, encoded = dparams["filename*"].partition("''")
            filename = unquote(encoded, encoding=charset or "utf-8", errors="replace")
        elif "filename" in dparams:
            filename = _HTML5_ESCAPES.sub(lambda m: chr(int(m.group(1), 16)), dparams["filename"])
        parts.append(FormPart(dparams["name"], data, filename, headers.get("content-type")))
    return parts
