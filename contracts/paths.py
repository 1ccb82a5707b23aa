"""Which call paths may cross the bus: the one rule the edge enforces (400) and the adapter
enforces again before it builds a runner URL.

The edge authorises the path aiohttp decoded once; the runner must receive exactly that
path, so nothing after the check may decode or normalise it again. A path is refused when
decoding it again, or normalising it as some HTTP stack on the way would, could turn it
into another path:

- a percent-escape left after the one decoding (``%252e`` arrives as ``%2e``: double
  encoding; undecodable bytes such as the overlong ``%c0%ae`` stay escaped too),
- ``.`` and ``..`` segments, and segments that Unicode compatibility folding turns into them
  or into a separator (fullwidth dots U+FF0E), backslashes, ``;`` (path parameters),
- control characters (NUL included), leading or trailing whitespace in a segment,
- empty segments (``a//b``, a leading ``/``) — only a trailing ``/`` is allowed.

A pure function of the string, so that ``contracts`` stays free of edge and adapter code.
"""

from __future__ import annotations

import re
import unicodedata

# The usual path (ASCII words, dots only inside segments) needs no closer look.
_PLAIN = re.compile(r"[\w~-]+(?:\.[\w~-]+)*(?:/[\w~-]+(?:\.[\w~-]+)*)*/?", re.ASCII)
_BAD = re.compile(r"%[0-9A-Fa-f]{2}|[\\;\x00-\x1f\x7f-\x9f]")
_DOTS = frozenset({".", ".."})


def refusal(path: str) -> str | None:
    """Why ``path`` (as decoded once) may not cross the bus, or None when it may."""
    if not path or _PLAIN.fullmatch(path):
        return None  # "" is the system's base URL itself
    found = _BAD.search(path)
    if found is not None:
        char = found.group()
        if char.startswith("%"):
            return f"the path holds {char!r} after decoding (double encoding is not allowed)"
        if char == "\\":
            return "backslashes are not allowed in paths"
        if char == ";":
            return "';' is not allowed in paths"
        return "control characters are not allowed in paths"
    segments = path.split("/")
    if segments[-1] == "" and len(segments) > 1:
        segments.pop()  # one trailing slash
    folded = not path.isascii()
    for segment in segments:
        if not segment:
            return "empty path segments ('//' or a leading '/') are not allowed"
        if segment in _DOTS:
            return "'.' and '..' are not allowed as path segments"
        if segment != segment.strip():
            return "path segments may not start or end with whitespace"
        if folded:
            norm = unicodedata.normalize("NFKC", segment)
            if norm in _DOTS or "/" in norm or "\\" in norm or norm != norm.strip():
                return "path segments may not fold into '.', '..' or a separator"
    return None
