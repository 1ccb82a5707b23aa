"""A bulkhead per channel/path on one edge: at most ``max_concurrent`` calls in flight; a
call past it waits up to ``max_wait`` seconds for a slot, then is refused with 503
``bulkhead_full``, so one slow path cannot take every connection of the edge."""

from __future__ import annotations

import asyncio
import math

from busgate.contracts.config import Bulkhead as BulkheadConfig
from busgate.contracts.errors import BulkheadFull


class Bulkhead:
    def __init__(self, name: str, config: BulkheadConfig) -> None:
        self.name = name
        self.config = config
        self._slots = asyncio.Semaphore(max(config.max_concurrent, 1))
        self.unbounded = config.max_concurrent < 0
        self.in_flight = 0

    async def acquire(self) -> None:
        """Take a slot, waiting up to ``max_wait``; raises BulkheadFull."""
        if self.unbounded:
            return
        slots = self._slots
        if slots.locked():
            wait = self.config.max_wait
            if wait <= 0:
                raise self._full()
            try:
                async with asyncio.timeout(wait):
                    await slots.acquire()
            except TimeoutError:
                raise self._full() from None
        else:
            await slots.acquire()  # free: returns at once
        self.in_flight += 1

    def release(self) -> None:
        if not self.unbounded:
            self.in_flight -= 1
            self._slots.release()

    def _full(self) -> BulkheadFull:
        return BulkheadFull(
            f"{self.config.max_concurrent} calls already in flight on {self.name}",
            retry_after=max(1, math.ceil(self.config.max_wait)),
        )
