"""Stopping background tasks without ever hanging a close().

On Python 3.11 ``asyncio.wait_for`` can swallow a cancellation that lands just as its inner
call completes, so a reader loop may outlive its ``cancel()``; awaiting it unbounded would
then hang shutdown for good. Cancel, then wait a bounded time.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("busgate.bus")


async def stop_task(task: asyncio.Task[None] | None, grace: float = 5.0) -> None:
    if task is None or task.done():
        return
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        log.warning("task %s did not stop within %g s; left behind", task.get_name(), grace)
