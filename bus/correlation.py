"""Waiting requests of one edge node, keyed by request id.

A request registers before it is published and is removed in ``finally``; what arrives for an
id nobody waits for any more (late replies, steps after a cancel) is dropped and counted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from contracts.errors import BusgateError
from contracts.wire import Reply, StreamStep

StreamItem = StreamStep | BusgateError


@dataclass(slots=True)
class Counters:
    late: int = 0
    """Replies or steps that arrived after their request stopped waiting."""
    undecodable: int = 0


class Pending:
    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[Reply]] = {}
        self._streams: dict[str, asyncio.Queue[StreamItem]] = {}
        self.counters = Counters()

    def __len__(self) -> int:
        return len(self._futures) + len(self._streams)

    def expect_reply(self, request_id: str) -> asyncio.Future[Reply]:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = fut
        return fut

    def expect_stream(self, request_id: str) -> asyncio.Queue[StreamItem]:
        queue: asyncio.Queue[StreamItem] = asyncio.Queue()
        self._streams[request_id] = queue
        return queue

    def discard(self, request_id: str) -> None:
        self._futures.pop(request_id, None)
        self._streams.pop(request_id, None)

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
        queue.put_nowait(step)

    def fail(self, request_id: str, error: BusgateError) -> None:
        fut = self._futures.get(request_id)
        if fut is not None:
            if not fut.done():
                fut.set_exception(error)
            return
        queue = self._streams.get(request_id)
        if queue is not None:
            queue.put_nowait(error)

    def close(self, error: BusgateError) -> None:
        """Fail everything still waiting (the bus is closing)."""
        for request_id in list(self._futures) + list(self._streams):
            self.fail(request_id, error)
