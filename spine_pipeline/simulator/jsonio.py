"""JSON encoding for responses, including an iterative encoder for pathologically deep payloads.

``json.dumps`` recurses in C and raises ``RecursionError`` around 1,000 levels; the ``deep-tasks``
scenario serves a 5,000-level task tree, so it goes through :func:`dumps_iterative`, which produces
exactly the same text as ``dumps`` (compact separators, ``ensure_ascii=False``).
"""

from __future__ import annotations

import json
from typing import Any

_encode_str = json.encoder.encode_basestring


def dumps(obj: Any) -> str:
    """Compact JSON text, non-ASCII kept as is (what the simulator serves)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class _Lit(str):
    """Marks already-encoded JSON text on the work stack."""

    __slots__ = ()


_OPEN_OBJ, _CLOSE_OBJ, _OPEN_ARR, _CLOSE_ARR, _COMMA = (_Lit(c) for c in "{}[],")


def dumps_iterative(obj: Any) -> str:
    """Same output as :func:`dumps`, without recursion (any nesting depth)."""
    out: list[str] = []
    stack: list[Any] = [obj]
    while stack:
        item = stack.pop()
        if type(item) is _Lit:
            out.append(item)
        elif isinstance(item, str):
            out.append(_encode_str(item))
        elif isinstance(item, dict):
            if not item:
                out.append("{}")
                continue
            parts: list[Any] = [_OPEN_OBJ]
            for i, (key, value) in enumerate(item.items()):
                if i:
                    parts.append(_COMMA)
                if not isinstance(key, str):
                    key = json.dumps(key)  # what json.dumps does with int/float/bool/None keys
                parts.append(_Lit(_encode_str(key) + ":"))
                parts.append(value)
            parts.append(_CLOSE_OBJ)
            stack.extend(reversed(parts))
        elif isinstance(item, (list, tuple)):
            if not item:
                out.append("[]")
                continue
            parts = [_OPEN_ARR]
            for i, value in enumerate(item):
                if i:
                    parts.append(_COMMA)
                parts.append(value)
            parts.append(_CLOSE_ARR)
            stack.extend(reversed(parts))
        else:
            out.append(dumps(item))
    return "".join(out)


def loads_deep(text: str | bytes) -> Any:
    """``json.loads`` with a raised recursion limit, for reading deep payloads back in tests."""
    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 50_000))
    try:
        return json.loads(text)
    finally:
        sys.setrecursionlimit(old)
