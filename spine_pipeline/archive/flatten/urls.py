"""Signed URLs, which the archive deliberately does not keep.

Artifact `download_url`s and the `url`s of artifact blocks are pre-signed: they carry a
signature (a bearer credential for that object) and expire. `slicing` removes every
`download_url` member from row JSON and `dag` removes string `url` members of blocks that
are not external links; this module has the URL rules themselves and the best-effort
textual redaction of a document that is not valid JSON (kept verbatim otherwise).
"""

from __future__ import annotations

import re

__all__ = ["EXTERNAL_URL_BLOCK_TYPES", "redact_unparsed", "strip_url"]

# Block types whose `url` is an external reference (kept as received). Any other block's url
# may be a pre-signed artifact URL, so it is stored without query string/fragment/userinfo.
EXTERNAL_URL_BLOCK_TYPES = frozenset({"web-block", "yt-block"})
# Best-effort redaction for documents that are not valid JSON (kept verbatim otherwise).
_JSON_STR = r'"(?:[^"\\]|\\.)*"'
_BAD_DOWNLOAD_URL = re.compile(r'("download_url"\s*:\s*)' + _JSON_STR)
_BAD_URL = re.compile(r'("url"\s*:\s*")((?:[^"\\]|\\.)*)(")')


def strip_url(url: str) -> str:
    """The url without query string, fragment and userinfo (where signatures and secrets live).

    Plain string surgery, not `urllib` parsing: it cannot raise and changes nothing else.
    """
    cut = len(url)
    for ch in "?#":
        i = url.find(ch)
        if i != -1 and i < cut:
            cut = i
    base = url[:cut]
    scheme_end = base.find("://")
    if scheme_end != -1:
        start = scheme_end + 3
        slash = base.find("/", start)
        authority_end = len(base) if slash == -1 else slash
        at = base.rfind("@", start, authority_end)
        if at != -1:
            base = base[:start] + base[at + 1 :]
    return base


def redact_unparsed(text: str) -> str:
    """Best-effort redaction of a document that is not valid JSON (kept verbatim otherwise)."""
    text = _BAD_DOWNLOAD_URL.sub(r"\1null", text)
    return _BAD_URL.sub(lambda m: m.group(1) + strip_url(m.group(2)) + m.group(3), text)
