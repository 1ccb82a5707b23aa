"""Flow control of streams: credits, like RSocket's request-n (see DESIGN.md).

The edge says in its stream Request how many steps it can take (``Request.credits``) and,
as it hands steps on to its client, sends :class:`~busgate.contracts.wire.Credit` messages
that move the highest ``seq`` the adapter may send (:class:`Window`). The adapter makes its
next runner call only once the step it will produce is within that limit (:class:`Credits`).
A client that stops reading thus stops the runner: the edge holds at most one window of
steps, whatever the saga's pace.
"""

from __future__ import annotations

import asyncio

INITIAL = 2
"""Steps an adapter may send before the edge has seen any: few, since one may be large."""


class Window:
    """The edge's side: when to grant more, and up to which ``seq``.

    The window is ``steps`` steps, fewer when steps are large: at most ``max_bytes`` divided
    by the largest step seen, at least one. Sizes are unknown until a step arrives, so the
    first grant (the Request's ``credits``) is :data:`INITIAL` steps; the window opens with
    the first step handed on, one bus round trip later. A grant goes out once the limit can
    move by half a window (like TCP's window updates), so a fast stream costs one Credit
    every few steps rather than one per step. Never stuck: once every step received has been
    handed on, the limit is above the last ``seq``.
    """

    __slots__ = ("granted", "largest", "max_bytes", "steps")

    def __init__(self, steps: int, max_bytes: int = 0) -> None:
        self.steps = max(1, steps)
        self.max_bytes = max_bytes
        self.granted = min(self.steps, INITIAL)
        """The limit the adapter knows: the initial credits, then the last Credit sent."""
        self.largest = 0

    def handed_on(self, seq: int, size: int) -> int | None:
        """Step ``seq`` (``size`` bytes of items) has left the edge's buffer; the new limit
        to send, or None when the current one will do for now."""
        self.largest = max(self.largest, size)
        steps = self.steps
        if self.max_bytes > 0 and self.largest > 0:
            steps = max(1, min(steps, self.max_bytes // self.largest))
        limit = seq + steps
        if limit - self.granted < max(1, steps // 2):
            return None
        self.granted = limit
        return limit


class Credits:
    """The adapter's side: the highest ``seq`` it may send, and waiting for more.

    ``limit`` None means no flow control (the edge predates credits): every step may go.
    """

    __slots__ = ("_more", "limit")

    def __init__(self, initial: int) -> None:
        self.limit: int | None = initial if initial > 0 else None
        self._more: asyncio.Event | None = None
        """Made by the first ``wait`` that has to wait (most requests never do)."""

    def grant(self, limit: int) -> None:
        if self.limit is not None and limit > self.limit:
            self.limit = limit
            if self._more is not None:
                self._more.set()

    def allows(self, seq: int) -> bool:
        return self.limit is None or seq <= self.limit

    async def wait(self, seq: int, cancelled: asyncio.Event) -> bool:
        """Wait until ``seq`` may be sent (True) or ``cancelled`` is set (False)."""
        while not self.allows(seq):
            if cancelled.is_set():
                return False
            if self._more is None:
                self._more = asyncio.Event()
            self._more.clear()
            waiters = [asyncio.ensure_future(self._more.wait())]
            waiters.append(asyncio.ensure_future(cancelled.wait()))
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        return not cancelled.is_set()
