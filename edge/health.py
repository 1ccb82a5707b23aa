"""``/healthz`` (the process is alive) and ``/readyz`` (bus connected, config loaded)."""

from __future__ import annotations

from aiohttp import web

from busgate.contracts.codec import json_encode
from busgate.edge import keys


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    bus = app[keys.BUS]
    config = app[keys.LIVE].config
    adapters = bus.presence.snapshot()
    ready = bus.connected
    body: dict[str, object] = {
        "status": "ready" if ready else "unavailable",
        "bus": "connected" if bus.connected else "disconnected",
        "node": bus.node,
        "systems": {name: adapters.get(name, []) for name in config.systems},
    }
    if (guards := app.get(keys.GUARDS)) is not None:
        body["resilience"] = guards.status()
    return web.Response(
        status=200 if ready else 503, body=json_encode(body), content_type="application/json"
    )
