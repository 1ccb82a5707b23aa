"""``--log-format json``: one JSON object per line, with the ``trace_id`` and ``request_id``
of the call a record was logged in.

The ids come from :data:`CALL`, a context variable that the edge's observe middleware and
the adapter's observer set per call (aiohttp runs each call in its own task, and so does the
bus for each request an adapter takes, so the value never leaks into another call). It lives
in ``bus`` because edges and adapters both set it.
"""

from __future__ import annotations

import contextvars
import logging
import time

import msgspec

CALL: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "busgate_call", default=None
)
"""(request id, trace id) of the call being handled."""

_encode = msgspec.json.Encoder().encode

enabled = False
"""Whether JSON logging is on (nodes then set :data:`CALL` even with telemetry off)."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        call = CALL.get()
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": call[1] if call else None,
            "request_id": call[0] if call else None,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encode(entry).decode()


def configure(level: str, fmt: str) -> None:
    """The root logger on stderr, as text or JSON lines."""
    global enabled
    handler = logging.StreamHandler()
    if fmt == "json":
        enabled = True
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
