"""``GET /api/asyncapi.json``: the AsyncAPI document of this gateway's bus (``bus.asyncapi``).

Built on first use and again after a config change (the systems may differ), not per call.
"""

from __future__ import annotations

from aiohttp import web

from busgate.contracts.codec import json_encode
from busgate.contracts.config import Config
from busgate.edge import keys

PATH = "/api/asyncapi.json"


def document_of(config: Config) -> bytes:
    # Imported here: FastStream is loaded by an edge only when someone asks for the document.
    from busgate.bus.asyncapi import bus_document

    systems = {name: str(system.__struct_config__.tag) for name, system in config.systems.items()}
    return json_encode(bus_document(config.gateway.bus, config.gateway.prefix, systems))


def install(app: web.Application) -> None:
    cached: tuple[Config | None, bytes] = (None, b"")

    async def asyncapi(request: web.Request) -> web.Response:
        nonlocal cached
        config = request.app[keys.CONFIG]
        if cached[0] is not config:
            cached = (config, document_of(config))
        return web.Response(body=cached[1], content_type="application/json")

    app.router.add_get(PATH, asyncapi)
