"""``POST /api/track/{channel}/{path}``: tracking events, answered 202 at once and published
to the bus in batches (``PREFIX.track.CHANNEL`` on NATS, topic ``PREFIX.track`` on Kafka).

An event is a ``Request`` of kind ``track``: checked, authenticated and sessionised like a
call (the auth middleware applies the channel's rules; identity and session id travel in the
envelope), so a consumer knows who sent what. Batching keeps the 202 off the bus's latency:
events wait at most ``FLUSH`` seconds, or go as soon as ``BATCH`` are waiting. When the bus
cannot take them the node holds at most ``MAX_WAITING``; past that a call gets 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator

from aiohttp import web

from busgate.contracts.codec import encode, json_encode
from busgate.contracts.errors import BusgateError, BusUnavailable
from busgate.edge import envelope, keys
from busgate.edge.responses import JSON

log = logging.getLogger("busgate.edge.track")

ROUTE = r"/api/track/{channel}/{path:[\s\S]*}"
FLUSH = 0.05
BATCH = 256
MAX_WAITING = 10_000


class Tracker:
    def __init__(self) -> None:
        self.waiting: defaultdict[str, list[bytes]] = defaultdict(list)
        self.count = 0
        self.published = 0
        self.lost = 0
        self._wake = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        app = request.app
        event = await envelope.build(request, app[keys.LIVE].config, "track")
        if self.count >= MAX_WAITING:
            raise BusUnavailable("tracking events are not reaching the bus; try again shortly")
        self.waiting[event.channel].append(encode(event))
        self.count += 1
        if self.count >= BATCH:
            self._wake.set()
        body = json_encode({"accepted": True, "requestId": event.shown_id})
        return web.Response(status=202, body=body, content_type=JSON)

    async def run(self, app: web.Application) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush(app)

    async def flush(self, app: web.Application) -> None:
        batches, self.waiting = self.waiting, defaultdict(list)
        for channel, batch in batches.items():
            try:
                await app[keys.BUS].publish_track(channel, batch)
            except BusgateError as exc:
                log.warning("track: %d event(s) of %s not published: %s", len(batch), channel, exc)
                self.lost += len(batch)
            else:
                self.published += len(batch)
            self.count -= len(batch)


def install(app: web.Application) -> None:
    tracker = Tracker()

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(tracker.run(app))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await tracker.flush(app)  # what was accepted goes out before the bus closes

    app.cleanup_ctx.append(ctx)
    app.router.add_post(ROUTE, tracker.handle)
