"""JSON for pathological nesting: parse and serialise without recursion.

`json.loads` gives up past ~1,000 levels (RecursionError). Spine task trees are nested
JSON, and a hostile or merely huge tree must still be archived, so the fallback here uses
an explicit stack. It is only used after the fast C parser has refused the input.
"""

from __future__ import annotations

import json
import re
from typing import Any

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_WS = " \t\n\r"
_LITERALS = {"true": True, "false": False, "null": None}


def loads(text: str) -> Any:
    """`json.loads` that survives any nesting depth."""
    try:
        return json.loads(text)
    except RecursionError:
        value, end = loads_deep(text, 0)
        while end < len(text) and text[end] in _WS:
            end += 1
        if end != len(text):
            raise ValueError(f"extra data at char {end}") from None
        return value


def loads_deep(text: str, pos: int = 0) -> tuple[Any, int]:
    """Parse one JSON value starting at `pos` iteratively; return it and the end index."""
    stack: list[tuple[list[Any] | dict[str, Any], str | None]] = []
    n = len(text)

    def skip(i: int) -> int:
        while i < n and text[i] in _WS:
            i += 1
        return i

    i = skip(pos)
    while True:
        # Parse one value (scalar, or open a container).
        if i >= n:
            raise ValueError("unexpected end of JSON")
        ch = text[i]
        value: Any
        opened = False
        if ch == "{":
            i = skip(i + 1)
            if i < n and text[i] == "}":
                value, i = {}, i + 1
            else:
                container: dict[str, Any] = {}
                if i >= n or text[i] != '"':
                    raise ValueError(f"expected a key at char {i}")
                key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
                i = skip(i)
                if i >= n or text[i] != ":":
                    raise ValueError(f"expected ':' at char {i}")
                stack.append((container, key))
                i = skip(i + 1)
                opened = True
        elif ch == "[":
            i = skip(i + 1)
            if i < n and text[i] == "]":
                value, i = [], i + 1
            else:
                stack.append(([], None))
                opened = True
        elif ch == '"':
            value, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        else:
            for word, lit in _LITERALS.items():
                if text.startswith(word, i):
                    value, i = lit, i + len(word)
                    break
            else:
                m = _NUMBER.match(text, i)
                if not m:
                    raise ValueError(f"unexpected character at char {i}")
                token = m.group()
                value = float(token) if any(c in token for c in ".eE") else int(token)
                i = m.end()
        if opened:
            continue
        # Attach the finished value to its parent, closing containers as they end.
        while True:
            if not stack:
                return value, i
            parent, key = stack[-1]
            if isinstance(parent, dict):
                assert key is not None
                parent[key] = value
            else:
                parent.append(value)
            i = skip(i)
            if i < n and text[i] == ",":
                i = skip(i + 1)
                if isinstance(parent, dict):
                    if i >= n or text[i] != '"':
                        raise ValueError(f"expected a key at char {i}")
                    new_key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
                    i = skip(i)
                    if i >= n or text[i] != ":":
                        raise ValueError(f"expected ':' at char {i}")
                    stack[-1] = (parent, new_key)
                    i = skip(i + 1)
                break  # parse the next element
            closer = "}" if isinstance(parent, dict) else "]"
            if i < n and text[i] == closer:
                stack.pop()
                value, i = parent, i + 1
                continue
            raise ValueError(f"expected ',' or '{closer}' at char {i}")


def dumps(value: Any) -> str:
    """Compact JSON (like `json.dumps(..., ensure_ascii=False)`) at any nesting depth."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except RecursionError:
        pass
    out: list[str] = []
    # Work items: ("v", value) to emit a value, or ("s", text) to emit literal text.
    work: list[tuple[str, Any]] = [("v", value)]
    while work:
        tag, item = work.pop()
        if tag == "s":
            out.append(item)
        elif isinstance(item, dict):
            parts: list[tuple[str, Any]] = [("s", "{")]
            for idx, (k, v) in enumerate(item.items()):
                prefix = ", " if idx else ""
                parts.append(("s", prefix + json.dumps(str(k), ensure_ascii=False) + ": "))
                parts.append(("v", v))
            parts.append(("s", "}"))
            work.extend(reversed(parts))
        elif isinstance(item, list | tuple):
            parts = [("s", "[")]
            for idx, v in enumerate(item):
                if idx:
                    parts.append(("s", ", "))
                parts.append(("v", v))
            parts.append(("s", "]"))
            work.extend(reversed(parts))
        else:
            out.append(json.dumps(item, ensure_ascii=False))
    return "".join(out)
