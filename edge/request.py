"""``/api/request/{channel}/{path}``: one call, one reply, through the bus."""

from __future__ import annotations

from aiohttp import web

from busgate.contracts.errors import Remote
from busgate.edge import envelope, formats, keys
from busgate.edge.async_calls import HEADER, handle_async
from busgate.edge.responses import from_reply


async def handle_request(request: web.Request) -> web.StreamResponse:
    app = request.app
    if (detach := request.headers.get(HEADER)) is not None:
        return await handle_async(request, detach)
    fmt = formats.wanted(request)  # 406 before any runner call
    envelope_ = await envelope.build(request, app[keys.LIVE].config, "request")
    reply = await app[keys.BUS].request(envelope_)
    if reply.error is not None:
        raise Remote(reply.error)
    return from_reply(reply) if fmt is None else formats.render(reply, fmt)
