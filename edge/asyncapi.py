"""``GET /api/asyncapi.json``: the AsyncAPI document of this gateway's bus (``bus.asyncapi``).

Built on first use and again after a config change (the systems may differ), not per call.
It lays out the bus behind the gateway (subjects, topics, envelopes), which is for the
people who write adapters and runners, not for API clients: it is served to the addresses
``gateway.control_allow`` lists (loopback by default), as the control API is; others get a
403. ``busgate asyncapi --config`` writes the same document anywhere.
"""

from __future__ import annotations

from aiohttp import web

from busgate.contracts import errors
from busgate.contracts.codec import json_encode
from busgate.contracts.config import Config
from busgate.edge import keys
from busgate.edge.control import allowed_ip, operator_networks

PATH = "/api/asyncapi.json"


def document_of(config: Config) -> bytes:
    # Imported here: FastStream is loaded by an edge only when someone asks for the document.
    from busgate.bus.asyncapi import bus_document

    systems = {name: str(system.__struct_config__.tag) for name, system in config.systems.items()}
    return json_encode(bus_document(config.gateway.bus, config.gateway.prefix, systems))


def install(app: web.Application, config: Config) -> None:
    """Raises ConfigError for a ``control_allow`` that does not parse (at start, as the
    control API does)."""
    networks = operator_networks(config)
    made: tuple[Config | None, bytes] = (None, b"")

    async def asyncapi(request: web.Request) -> web.Response:
        nonlocal made
        if not allowed_ip(networks, request.remote):
            raise errors.Forbidden("the bus's AsyncAPI document is not open to this address")
        live = request.app[keys.LIVE].config
        if made[0] is not live:
            made = (live, document_of(live))
        return web.Response(body=made[1], content_type="application/json")

    app.router.add_get(PATH, asyncapi)
