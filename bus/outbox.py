"""Events published beside a call, never in its way: audit events (``edge.audit``) and call
logs (``adapters.call_logs``). A publish runs as its own task; one that fails is counted and
said in a warning at most every 10 s (a bus outage must not flood the log); ``drain`` lets the
last ones go out before the bus closes."""

from __future__ import annotations

import asyncio
import logging
import time

from busgate.bus.base import Bus

log = logging.getLogger("busgate.bus.outbox")

WARN_EVERY = 10.0
DRAIN_TIMEOUT = 5.0


class Outbox:
    def __init__(self, what: str) -> None:
        self.what = what
        """What the events are, for the warning ("audit events", "call logs")."""
        self.lost = 0
        self._warned = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, bus: Bus, dest: str, data: bytes, headers: dict[str, str]) -> None:
        task = asyncio.ensure_future(self._send(bus, dest, data, headers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, bus: Bus, dest: str, data: bytes, headers: dict[str, str]) -> None:
        try:
            await bus.publish_event(dest, data, headers)
        except Exception as exc:
            self.lost += 1
            now = time.monotonic()
            if now - self._warned > WARN_EVERY:
                self._warned = now
                log.warning("%s lost (%d so far): %s", self.what, self.lost, exc)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=DRAIN_TIMEOUT)
