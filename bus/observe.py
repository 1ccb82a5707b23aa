"""What ``Bus.observe`` installs: a wrapper around a node's outgoing calls (spans, metrics)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from busgate.contracts.wire import Reply, Request, StreamStep

SendRequest = Callable[[Request], Awaitable[Reply]]
SendStream = Callable[..., AsyncIterator[StreamStep]]


class CallObserver(Protocol):
    async def request(self, inner: SendRequest, req: Request) -> Reply: ...

    def stream(
        self,
        inner: SendStream,
        req: Request,
        *,
        idle_timeout: float,
        window: int = 0,
        window_bytes: int = 0,
    ) -> AsyncIterator[StreamStep]: ...
