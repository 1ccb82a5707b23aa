"""Waiting requests of one edge node, keyed by request id.

A request registers before it is published and is removed in ``finally``; what arrives for an
id nobody waits for any more (late replies, steps after a cancel) is dropped and counted.

Deadlines are kept here too, in slots of ``DEADLINE_SLOT`` seconds: one event-loop timer per
slot fails every reply still awaited in it, rather than a timer per request. A timer per call
(``asyncio.timeout``) cost about 10 µs of the edge's ~130 µs of CPU per call on a 2-core box,
as much as the rest of ``Bus.request``; a slot costs a set insert and removal. A request thus
times out at most ``DEADLINE_SLOT`` after its deadline, never before it.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from busgate.contracts.errors import BusgateError, UpstreamError
from busgate.contracts.wire import Reply, StreamStep

StreamItem = StreamStep | BusgateError

DEADLINE_SLOT = 0.01
"""Seconds per deadline slot: how late after its deadline a reply stops being awaited."""


@dataclass(slots=True)
class Counters:
    late: int = 0
    """Replies or steps that arrived after their request stopped waiting."""
    undecodable: int = 0
    overflowed: int = 0
    """Streams failed because their adapter sent more steps than the edge buffers."""


class Pending:
    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[Reply]] = {}
        self._streams: dict[str, asyncio.Queue[StreamItem]] = {}
        self._slot_of: dict[str, int] = {}
        """The deadline slot of each awaited reply that has a deadline."""
        self._slots: dict[int, set[asyncio.Future[Reply]]] = {}
        """Awaited replies by deadline slot; each slot has one timer, set by its first entry."""
        self.counters = Counters()

    def __len__(self) -> int:
        return len(self._futures) + len(self._streams)

    def expect_reply(self, request_id: str, deadline: float = 0.0) -> asyncio.Future[Reply]:
        """A future for the reply; past ``deadline`` (epoch seconds, 0 = none) it raises
        ``TimeoutError`` (within ``DEADLINE_SLOT``)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply] = loop.create_future()
        self._futures[request_id] = fut
        if deadline:
            when = loop.time() + (deadline - time.time())
            slot = math.ceil(when / DEADLINE_SLOT)
            due = self._slots.get(slot)
            if due is None:
                due = self._slots[slot] = set()
                loop.call_at(slot * DEADLINE_SLOT, self._expire, slot)
            due.add(fut)
            self._slot_of[request_id] = slot
        return fut

    def _expire(self, slot: int) -> None:
        for fut in self._slots.pop(slot, ()):
            if not fut.done():
                fut.set_exception(TimeoutError())

    def expect_stream(self, request_id: str, limit: int = 0) -> asyncio.Queue[StreamItem]:
        """A queue for the stream's steps; past ``limit`` unread steps (0 = none) the stream
        fails and its steps are dropped: an adapter that ignores credits cannot grow it."""
        queue: asyncio.Queue[StreamItem] = asyncio.Queue(limit)
        self._streams[request_id] = queue
        return queue

    def discard(self, request_id: str) -> None:
        fut = self._futures.pop(request_id, None)
        self._streams.pop(request_id, None)
        slot = self._slot_of.pop(request_id, None)
        if fut is None:
            return
        if slot is not None and (due := self._slots.get(slot)) is not None:
            due.discard(fut)
        if fut.done() and not fut.cancelled():
            fut.exception()  # retrieved: a failure nobody awaited any more is not logged

    def resolve(self, reply: Reply) -> None:
        fut = self._futures.get(reply.id)
        if fut is None or fut.done():
            self.counters.late += 1
            return
        fut.set_result(reply)

    def step(self, step: StreamStep) -> None:
        queue = self._streams.get(step.id)
        if queue is None:
            self.counters.late += 1
            return
        if queue.full():
            self.counters.overflowed += 1
            del self._streams[step.id]
            _end(queue, UpstreamError("the adapter sent more steps than it was granted"))
            return
        queue.put_nowait(step)

    def fail(self, request_id: str, error: BusgateError) -> None:
        fut = self._futures.get(request_id)
        if fut is not None:
            if not fut.done():
                fut.set_exception(error)
            return
        queue = self._streams.get(request_id)
        if queue is not None:
            if queue.full():
                _end(queue, error)
            else:
                queue.put_nowait(error)

    def close(self, error: BusgateError) -> None:
        """Fail everything still waiting (the bus is closing)."""
        for request_id in list(self._futures) + list(self._streams):
            self.fail(request_id, error)


def _end(queue: asyncio.Queue[StreamItem], error: BusgateError) -> None:
    """Replace what a full stream queue holds by ``error``: the stream is over."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(error)
