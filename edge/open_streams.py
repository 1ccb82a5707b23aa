"""The open SSE streams of one edge node: their limits, and asking them to stop.

``gateway.max_streams`` bounds the streams of the node, ``gateway.max_streams_per_client``
those of one client: the authenticated subject when there is one, else the client's IP
address. Past either, a new stream is refused with 429 and ``Retry-After`` (the call never
reaches the bus). A limit of 0 means none.

Each admitted stream holds a :class:`Slot`: the little state that the node-wide heartbeat
sweep (``edge.stream.sweep``) needs, so that an idle stream costs no timer or task of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

from busgate.contracts.errors import RateLimited
from busgate.contracts.wire import Request

if TYPE_CHECKING:
    from aiohttp import web

RETRY_AFTER = 5.0
"""Seconds a refused client is told to wait; a slot frees whenever any stream ends."""

StopReason = Literal["shutdown", "duration"]


def client_key(req: Request) -> str:
    """Whose stream this is, for the per-client limit."""
    if req.identity is not None:
        return f"subject:{req.identity.subject}"
    return f"ip:{req.origin.client_ip if req.origin else ''}"


class Slot:
    """One admitted stream and what the sweep needs to know about it."""

    __slots__ = (
        "_owner",
        "client",
        "closed",
        "opened",
        "reason",
        "response",
        "task",
        "transport",
        "waiting",
        "written",
    )

    def __init__(self, owner: OpenStreams, client: str) -> None:
        self._owner = owner
        self.client = client
        self.closed = False
        self.opened = self.written = asyncio.get_running_loop().time()
        self.response: web.StreamResponse | None = None
        """Set once the stream's headers are sent."""
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[object] | None = asyncio.current_task()
        self.waiting = False
        """True while the stream's task waits for its next step (and may be cancelled)."""
        self.reason: StopReason | None = None
        """Why the node wants the stream to end, once it does."""

    def stop(self, reason: StopReason) -> None:
        """Ask the stream to end: at once if it waits for a step, else after its write."""
        if self.reason is not None or self.closed:
            return
        self.reason = reason
        if self.waiting and self.task is not None:
            self.task.cancel()

    def close(self) -> None:
        """Give the slot back (idempotent)."""
        if not self.closed:
            self.closed = True
            self._owner._release(self)


class OpenStreams:
    def __init__(self, max_streams: int, max_per_client: int) -> None:
        self.max_streams = max_streams
        self.max_per_client = max_per_client
        self._slots: set[Slot] = set()
        self._per_client: dict[str, int] = {}
        self.refused = 0

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[Slot]:
        """The open slots (a copy: the set may change while the caller awaits)."""
        return iter(list(self._slots))

    def of(self, client: str) -> int:
        return self._per_client.get(client, 0)

    def open(self, client: str) -> Slot:
        """Admit one more stream for ``client``, or raise RateLimited."""
        if self.max_streams > 0 and len(self._slots) >= self.max_streams:
            self.refused += 1
            raise RateLimited(
                f"this edge node has {len(self._slots)} open streams, its limit",
                retry_after=RETRY_AFTER,
            )
        held = self._per_client.get(client, 0)
        if self.max_per_client > 0 and held >= self.max_per_client:
            self.refused += 1
            raise RateLimited(
                f"too many open streams for this client (limit {self.max_per_client})",
                retry_after=RETRY_AFTER,
            )
        slot = Slot(self, client)
        self._slots.add(slot)
        self._per_client[client] = held + 1
        return slot

    def _release(self, slot: Slot) -> None:
        self._slots.discard(slot)
        held = self._per_client.get(slot.client, 0) - 1
        if held > 0:
            self._per_client[slot.client] = held
        else:
            self._per_client.pop(slot.client, None)

    def stop_all(self) -> int:
        """Ask every open stream to end (graceful shutdown); returns how many."""
        stopping = [slot for slot in self._slots if slot.reason is None]
        for slot in stopping:
            slot.stop("shutdown")
        return len(stopping)
