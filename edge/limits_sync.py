"""Keeps this edge's rate-limit windows in step with the other edges' (``edge.rate_limit``):
every ``gateway.rate_limit.sync_interval`` it publishes its counts on ``PREFIX.limits`` and
takes in the others' (``bus.limits_exchange``), as Kong's ``sync_rate`` does with Redis -- but
over the bus every node already has. Also installs the guards (``edge.resilience``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from busgate.bus.limits_exchange import Counts, open_exchange
from busgate.edge import keys
from busgate.edge.resilience import Guards

log = logging.getLogger("busgate.edge.limits")


async def limits_ctx(app: web.Application) -> AsyncIterator[None]:
    guards = app[keys.GUARDS]
    windows = guards.windows
    bus = app[keys.BUS]
    windows.node = bus.node
    exchange = None
    if guards.sharing:

        def on_counts(counts: Counts) -> None:
            if counts.bye:
                windows.forget(counts.node)
            else:
                windows.heard(counts.node, counts.counts, counts.seq, counts.seen)

        exchange = open_exchange(bus, guards.config.gateway.bus, on_counts)
    if exchange is None:
        yield
        return
    try:
        await exchange.start()
    except Exception as exc:
        log.warning("rate limits: not shared with other edges (%r); counted locally", exc)
        yield
        return

    async def beat() -> None:
        while True:
            counts, seq, seen = windows.report()
            await exchange.publish(Counts(node=bus.node, counts=counts, seq=seq, seen=seen))
            await asyncio.sleep(windows.interval)

    task = asyncio.create_task(beat(), name="limits-sync")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await exchange.publish(Counts(node=bus.node, bye=True))
        await exchange.close()


def install(app: web.Application) -> None:
    """The guards and their exchange; after the bus context (it uses the connection)."""
    app[keys.GUARDS] = Guards(app[keys.CONFIG])
    app.cleanup_ctx.append(limits_ctx)
