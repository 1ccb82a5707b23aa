"""A small server-sent events reader for tests, following the parsing rules browsers use."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp


@dataclass
class Event:
    kind: str = "message"
    """``message``, the ``event:`` name, or ``comment`` for a ``:`` line."""
    data: str = ""
    id: str | None = None
    """The ``id:`` of this very event (not the inherited last event id)."""
    at: float = 0.0
    """``time.monotonic()`` when its last line arrived."""


async def events(resp: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    """Events and comments as they arrive, until the server ends the response."""
    data: list[str] = []
    kind, event_id, has_id = "", None, False
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data or has_id:
                yield Event(kind or "message", "\n".join(data), event_id, time.monotonic())
            data, kind, event_id, has_id = [], "", None, False
            continue
        if line.startswith(":"):
            yield Event("comment", line[1:].strip(), None, time.monotonic())
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            kind = value
        elif field == "id":
            event_id, has_id = value, True


async def collect(resp: aiohttp.ClientResponse) -> list[Event]:
    """Every event (comments left out) until the response ends."""
    return [e async for e in events(resp) if e.kind != "comment"]
