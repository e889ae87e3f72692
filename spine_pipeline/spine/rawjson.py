"""JSON for pathological nesting: parse and serialise without recursion, with source spans.

`json.loads` gives up past ~1,000 levels (RecursionError). Spine task trees are nested
JSON, and a hostile or merely huge tree must still be archived. `parse_json` is an
iterative parser (explicit stack) that also records the source span of every value, so
callers can slice exact text instead of re-serialising; `loads` and `scan_value` use the C
parser first and fall back to it only when the C parser refuses the depth. An iterative
parser was chosen over "raise the recursion limit in a thread with a big stack": it has no
depth ceiling and cannot overflow the C stack (a segfault, not an exception).
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = [
    "Span",
    "dumps_iterative",
    "json_error",
    "loads",
    "parse_json",
    "parse_key",
    "scan_value",
    "skip_ws",
]

_scanstring = json.decoder.scanstring  # type: ignore[attr-defined]  # the C implementation
_c_scan_once = json.scanner.make_scanner(json.JSONDecoder())
_WS = re.compile(r"[ \t\n\r]*")
# ASCII digits only: the C scanner (what json.loads uses) does not accept Unicode digits.
_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")


class Span:
    """Where one JSON value sits in its source text, with the spans of its children.

    `members` is set for objects (`(key, key_start, value_span)` in source order, duplicates
    kept), `items` for arrays; both are None for scalars.
    """

    __slots__ = ("end", "items", "members", "start")

    def __init__(self, start: int, end: int = -1) -> None:
        self.start = start
        self.end = end
        self.members: list[tuple[str, int, Span]] | None = None
        self.items: list[Span] | None = None

    def __repr__(self) -> str:
        kind = "object" if self.members is not None else "array" if self.items is not None else ""
        return f"Span({self.start}, {self.end}{', ' + kind if kind else ''})"

    def last_member(self, key: str) -> Span | None:
        """The span of the value `json.loads` would keep for `key` (the last duplicate)."""
        if self.members is None:
            return None
        for k, _, sp in reversed(self.members):
            if k == key:
                return sp
        return None


def json_error(msg: str, text: str, pos: int) -> json.JSONDecodeError:
    return json.JSONDecodeError(msg, text, pos)


def skip_ws(text: str, pos: int) -> int:
    if pos < len(text) and text[pos] in " \t\n\r":
        return _WS.match(text, pos).end()  # type: ignore[union-attr]
    return pos


def parse_key(text: str, pos: int) -> tuple[str, int, int]:
    """Parse `"key" :` at pos; return key, key start, and the position of the value."""
    if pos >= len(text) or text[pos] != '"':
        raise json_error("Expecting property name enclosed in double quotes", text, pos)
    key, end = _scanstring(text, pos + 1, True)
    end = skip_ws(text, end)
    if end >= len(text) or text[end] != ":":
        raise json_error("Expecting ':' delimiter", text, end)
    return key, pos, skip_ws(text, end + 1)


def parse_json(text: str, pos: int = 0, *, whole: bool = True) -> tuple[Any, Span]:
    """Parse JSON without recursion, returning the value and the span tree of the source.

    Accepts exactly what `json.loads` accepts (including NaN/Infinity and duplicate keys, where
    the last value wins in the value but every member stays in `Span.members`). With
    `whole=False` parsing stops after the first value (its span says where). Raises
    `json.JSONDecodeError` (a `ValueError`) on invalid input.
    """
    n = len(text)
    # frame: [container, span, key, key_start]; key is None for arrays
    stack: list[list[Any]] = []
    pos = skip_ws(text, pos)
    while True:
        if pos >= n:
            raise json_error("Expecting value", text, pos)
        ch = text[pos]
        value: Any
        if ch == "{":
            sp = Span(pos)
            sp.members = []
            pos = skip_ws(text, pos + 1)
            if pos < n and text[pos] == "}":
                pos += 1
                sp.end = pos
                value = {}
            else:
                key, key_start, pos = parse_key(text, pos)
                stack.append([{}, sp, key, key_start])
                continue
        elif ch == "[":
            sp = Span(pos)
            sp.items = []
            pos = skip_ws(text, pos + 1)
            if pos < n and text[pos] == "]":
                pos += 1
                sp.end = pos
                value = []
            else:
                stack.append([[], sp, None, 0])
                continue
        elif ch == '"':
            value, end = _scanstring(text, pos + 1, True)
            sp = Span(pos, end)
            pos = end
        else:
            m = _NUMBER.match(text, pos)
            if m is not None:
                integer, frac, exp = m.groups()
                value = float(integer + (frac or "") + (exp or "")) if frac or exp else int(integer)
                end = m.end()
            elif text.startswith("null", pos):
                value, end = None, pos + 4
            elif text.startswith("true", pos):
                value, end = True, pos + 4
            elif text.startswith("false", pos):
                value, end = False, pos + 5
            elif text.startswith("NaN", pos):
                value, end = float("nan"), pos + 3
            elif text.startswith("Infinity", pos):
                value, end = float("inf"), pos + 8
            elif text.startswith("-Infinity", pos):
                value, end = float("-inf"), pos + 9
            else:
                raise json_error("Expecting value", text, pos)
            sp = Span(pos, end)
            pos = end
        # A value is complete: attach it to its parent, closing parents as they complete.
        while True:
            if not stack:
                if whole:
                    pos = skip_ws(text, pos)
                    if pos != n:
                        raise json_error("Extra data", text, pos)
                return value, sp
            frame = stack[-1]
            container, csp, key = frame[0], frame[1], frame[2]
            if key is not None:
                container[key] = value
                csp.members.append((key, frame[3], sp))
            else:
                container.append(value)
                csp.items.append(sp)
            pos = skip_ws(text, pos)
            if pos >= n:
                raise json_error("Unterminated container", text, pos)
            ch = text[pos]
            if ch == ",":
                pos = skip_ws(text, pos + 1)
                if key is not None:
                    frame[2], frame[3], pos = parse_key(text, pos)
                break  # parse the next member / element
            if ch == ("}" if key is not None else "]"):
                pos += 1
                csp.end = pos
                value, sp = container, csp
                stack.pop()
                continue
            raise json_error(
                "Expecting ',' delimiter" if ch not in "}]" else "Mismatched bracket", text, pos
            )


def loads(text: str) -> Any:
    """`json.loads` at C speed, falling back to the iterative parser for deep nesting."""
    try:
        return json.loads(text)
    except RecursionError:
        return parse_json(text)[0]


def scan_value(text: str, pos: int) -> tuple[Any, int]:
    """Parse one value at pos (C scanner, iterative fallback); return it and its end."""
    try:
        return _c_scan_once(text, pos)
    except StopIteration as exc:
        raise json_error("Expecting value", text, exc.value) from None
    except RecursionError:
        value, sp = parse_json(text, pos, whole=False)
        return value, sp.end


class _Lit:
    __slots__ = ("s",)

    def __init__(self, s: str) -> None:
        self.s = s


def dumps_iterative(value: Any) -> str:
    """json.dumps for values nested beyond the recursion limit (explicit stack)."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, _Lit):
            out.append(v.s)
        elif isinstance(v, dict):
            items = list(v.items())
            out.append("{")
            stack.append(_Lit("}"))
            for j in range(len(items) - 1, -1, -1):
                k, x = items[j]
                key = json.dumps(k if isinstance(k, str) else str(k), ensure_ascii=False)
                stack.append(x)
                stack.append(_Lit(("," if j else "") + key + ":"))
        elif isinstance(v, list | tuple):
            out.append("[")
            stack.append(_Lit("]"))
            for j in range(len(v) - 1, -1, -1):
                stack.append(v[j])
                if j:
                    stack.append(_Lit(","))
        else:
            out.append(json.dumps(v, ensure_ascii=False, default=str))
    return "".join(out)
