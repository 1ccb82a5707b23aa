"""The bytes of server-sent events (the ``text/event-stream`` format of the HTML standard).

Pure functions, no I/O: the stream handler (``edge.stream``) decides what to send and when.
A saga step becomes one event per item, the step's ``next`` cursor as the ``id`` of its last
event, so a reconnecting ``EventSource`` sends it back as ``Last-Event-ID``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from busgate.edge.responses import SERVER

CONTENT_TYPE = "text/event-stream"
HEADERS = {
    "Server": SERVER,  # sent before the front middleware sees the answer
    "Cache-Control": "no-cache",
    # Tell buffering proxies (nginx) to pass every event through at once.
    "X-Accel-Buffering": "no",
}

_NEWLINES = re.compile(rb"\r\n|\r|\n")

END = b"event: end\ndata: {}\n\n"
"""The saga finished. It carries ``{}``: an event without data is never dispatched."""


def valid_id(value: str) -> bool:
    """Whether ``value`` can be an event id: one line, no NUL (which browsers ignore)."""
    return not any(c in value for c in "\r\n\0")


def event(data: bytes, *, id: str | None = None, name: str | None = None) -> bytes:
    """One event. ``data`` is split into one ``data:`` line per line, so a pretty-printed
    JSON item arrives whole (the client joins the lines with ``\\n``). An ``id`` that cannot
    be sent (see :func:`valid_id`) is left out."""
    parts = []
    if name:
        parts.append(b"event: " + name.encode() + b"\n")
    if id is not None and valid_id(id):
        parts.append(b"id: " + id.encode() + b"\n")
    for line in _NEWLINES.split(data):
        parts.append(b"data: " + line + b"\n")
    parts.append(b"\n")
    return b"".join(parts)


def step(items: Sequence[bytes], next: str | None) -> bytes:
    """The events of one saga step: one per item, ``next`` as the id of the last one.

    A step without items but with a cursor becomes an id-only block: nothing is dispatched,
    yet the browser's last event id moves on, so a reconnect resumes after this step. A step
    with neither (an adapter's keepalive) is nothing at all.
    """
    if not items:
        if next is None or not valid_id(next):
            return b""
        return b"id: " + next.encode() + b"\n\n"
    last = len(items) - 1
    return b"".join(event(item, id=next if i == last else None) for i, item in enumerate(items))


def error(body: bytes) -> bytes:
    """The stream failed; ``body`` is the edge's JSON error (``{"error": {...}}``)."""
    return event(body, name="error")


def comment(text: str = "") -> bytes:
    """A comment line: ignored by clients, it keeps idle connections (and proxies) open."""
    return b": " + text.replace("\n", " ").replace("\r", " ").encode() + b"\n\n"
