"""Assembles the edge application: routes, middlewares and the bus connection."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

import bus as bus_
from contracts.config import Config
from edge import health, keys
from edge.ids import IdFactory
from edge.middleware.errors import errors_middleware
from edge.middleware.ids import ids_middleware
from edge.request import handle_request

API_PATH = "/api/request/{channel}/{path:.*}"


def create_app(config: Config, *, bus: bus_.Bus | None = None) -> web.Application:
    """The edge app; it connects its own bus unless one is given (tests, embedding)."""
    ids = IdFactory(config.gateway.id)
    app = web.Application(
        middlewares=[ids_middleware(config.gateway, ids), errors_middleware],
        client_max_size=config.gateway.max_body,
    )
    app[keys.CONFIG] = config
    app[keys.IDS] = ids

    async def bus_ctx(app: web.Application) -> AsyncIterator[None]:
        owned = bus is None
        the_bus = bus or bus_.from_url(
            config.gateway.bus, node=ids.node, prefix=config.gateway.prefix
        )
        if owned:
            await the_bus.connect()
        app[keys.BUS] = the_bus
        yield
        if owned:
            await the_bus.close()

    app.cleanup_ctx.append(bus_ctx)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        app.router.add_route(method, API_PATH, handle_request)
    return app
