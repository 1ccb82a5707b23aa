"""``X-Async`` on ``/api/request``: fire-and-forget calls, answered 202 ``{"requestId"}``.

``gateway``: once the request is on the bus (no reply address: nobody waits). ``backend``:
once an adapter has taken it -- the adapter replies 202 before it calls the runner. The
runner's answer is dropped by the adapter (it still shows in logs and traces). An
``Idempotency-Key`` makes a repeated call get the first 202 back without a second publish.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from busgate.bus.detached import post
from busgate.contracts import errors
from busgate.contracts.codec import json_encode
from busgate.edge import envelope, keys
from busgate.edge.idempotency import fingerprint
from busgate.edge.responses import JSON

HEADER = "X-Async"
MODES = ("gateway", "backend")


async def handle_async(request: web.Request, mode: str) -> web.StreamResponse:
    mode = mode.strip().lower()
    if mode not in MODES:
        raise errors.BadRequest(f"{HEADER} must be 'gateway' or 'backend'")
    app = request.app
    req = await envelope.build(request, app[keys.LIVE].config, "request")
    req = msgspec.structs.replace(req, detach=mode)
    bus = app[keys.BUS]

    async def publish(slot: str | None) -> web.Response:
        if mode == "gateway":
            await post(bus, req)
        else:
            reply = await bus.request(req)
            if reply.error is not None:
                raise errors.Remote(reply.error)
        body = json_encode({"requestId": req.id})
        return web.Response(status=202, body=body, content_type=JSON)

    asked = fingerprint("async", request.method, request.path_qs, mode, req.body)
    idempotency = app[keys.IDEMPOTENCY]
    return await idempotency.run(request, "async", req.identity, asked, publish)
