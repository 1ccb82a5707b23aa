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

from busgate.bus.limits_exchange import Counts, Exchange, open_exchange
from busgate.edge import keys
from busgate.edge.rate_limit import Report
from busgate.edge.resilience import Guards

log = logging.getLogger("busgate.edge.limits")


CHUNK = 1000
"""Counts per message, so that a report of many keys (per-IP limits) stays far below the
bus's message size."""


async def limits_ctx(app: web.Application) -> AsyncIterator[None]:
    guards = app[keys.GUARDS]
    windows = guards.windows
    bus = app[keys.BUS]
    windows.node = bus.node
    exchange: Exchange | None = None
    if guards.sharing:

        def on_counts(counts: Counts) -> None:
            if counts.bye:
                windows.forget(counts.node)
            else:
                windows.heard(counts.node, counts.counts, counts.seq, counts.seen, counts.full)

        exchange = open_exchange(bus, guards.config.gateway.bus, on_counts)
    if exchange is not None:
        try:
            await exchange.start()
        except Exception as exc:
            log.warning("rate limits: not shared with other edges (%r); counted locally", exc)
            exchange = None

    async def beat() -> None:
        """Every interval: forget ended windows, and publish the counts (if shared)."""
        while True:
            report = windows.report()
            if exchange is not None:
                for message in messages(bus.node, report):
                    await exchange.publish(message)
            await asyncio.sleep(windows.interval)

    task = asyncio.create_task(beat(), name="limits-sync")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if exchange is not None:
            await exchange.publish(Counts(node=bus.node, bye=True))
            await exchange.close()


def messages(node: str, report: Report) -> list[Counts]:
    """One report as messages of at most CHUNK counts; only the first replaces."""
    items = list(report.counts.items())
    chunks = [dict(items[i : i + CHUNK]) for i in range(0, len(items), CHUNK)] or [{}]
    return [
        Counts(
            node=node,
            counts=chunk,
            seq=report.seq,
            seen=report.seen,
            full=report.full and n == 0,
        )
        for n, chunk in enumerate(chunks)
    ]


def install(app: web.Application) -> None:
    """The guards and their exchange; after the bus context (it uses the connection)."""
    app[keys.GUARDS] = Guards(app[keys.CONFIG])
    app.cleanup_ctx.append(limits_ctx)
