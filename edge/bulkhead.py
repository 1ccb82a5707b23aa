"""A bulkhead per channel/path on one edge: at most ``max_concurrent`` calls in flight; a
call past it waits up to ``max_wait`` seconds for a slot, then is refused with 503
``bulkhead_full``, so one slow path cannot take every connection of the edge."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator

from busgate.contracts.config import Bulkhead as BulkheadConfig
from busgate.contracts.errors import BulkheadFull


class Bulkhead:
    def __init__(self, name: str, config: BulkheadConfig) -> None:
        self.name = name
        self.config = config
        self._slots = asyncio.Semaphore(max(config.max_concurrent, 1))
        self.unbounded = config.max_concurrent < 0
        self.in_flight = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.unbounded:
            yield
            return
        wait = self.config.max_wait
        if self._slots.locked() and wait <= 0:
            raise self._full()
        try:
            async with asyncio.timeout(wait if wait > 0 else None):
                await self._slots.acquire()
        except TimeoutError:
            raise self._full() from None
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()

    def _full(self) -> BulkheadFull:
        return BulkheadFull(
            f"{self.config.max_concurrent} calls already in flight on {self.name}",
            retry_after=max(1, math.ceil(self.config.max_wait)),
        )
