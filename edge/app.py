"""Assembles the edge application: routes, middlewares and the bus connection."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from busgate import bus as bus_
from busgate.bus.sessions import Sessions
from busgate.contracts.config import Config
from busgate.edge import asyncapi, audit, formats, health, keys, observe
from busgate.edge.aliases import compile_aliases
from busgate.edge.commands import install as install_commands
from busgate.edge.control import install as install_control
from busgate.edge.error_detail import ErrorLevels
from busgate.edge.files import install as install_files
from busgate.edge.full import install as install_full
from busgate.edge.idempotency import idempotency_ctx
from busgate.edge.ids import IdFactory
from busgate.edge.limits_sync import install as install_limits
from busgate.edge.live import LiveConfig, live_ctx
from busgate.edge.middleware.front import front_middleware
from busgate.edge.open_streams import OpenStreams
from busgate.edge.openapi import install as install_openapi
from busgate.edge.request import handle_request
from busgate.edge.response_headers import compile_header_rules
from busgate.edge.security import install as install_security
from busgate.edge.send import install as install_send
from busgate.edge.stream import handle_stream, sweeper
from busgate.edge.track import install as install_track

# Paths match any character, line breaks included, so that contracts.paths refuses them (400).
API_PATH = r"/api/request/{channel:(?!full/)[^/]+}/{path:[\s\S]*+" + formats.NO_EXTENSION + "}"
"""Paths without a format extension, and no ``full`` channel (see ``edge.full``): both leave
the hot route as cheap as a plain one (possessive, so a refused path costs no backtracking);
every route tried before the one that matches costs each call."""
STREAM_PATH = r"/api/stream/{channel}/{path:[\s\S]*}"


def create_app(
    config: Config,
    *,
    bus: bus_.Bus | None = None,
    sessions: Sessions | None = None,
    config_path: str | None = None,
) -> web.Application:
    """The edge app; it connects its own bus unless one is given (tests, embedding).
    ``config_path``: the file ``config`` came from, re-read every ``gateway.refresh``."""
    ids = IdFactory(config.gateway.id)
    # Spans, /metrics and log ids, as [telemetry] asks (None: none of them, no cost).
    calls = observe.call_telemetry(config, ids.node)
    app = web.Application(
        middlewares=[front_middleware(config.gateway, ids, calls)],
        client_max_size=config.gateway.max_body,
        # A client that drops its connection cancels its handler: an SSE stream notices at
        # once and cancels its saga (edge.stream); a plain call stops waiting for its reply.
        handler_args={"handler_cancellation": True},
    )
    app[keys.CONFIG] = config
    app[keys.LIVE] = LiveConfig(config)
    if config_path is not None:
        app[keys.CONFIG_PATH] = config_path
    app[keys.IDS] = ids
    app[keys.ALIASES] = compile_aliases(config)  # a bad expression: ConfigError, here
    app[keys.RESPONSE_HEADERS] = compile_header_rules(config)
    app[keys.ERROR_LEVELS] = ErrorLevels(config)
    app[keys.STREAMS] = OpenStreams(
        config.gateway.max_streams, config.gateway.max_streams_per_client
    )

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
    install_limits(app)  # rate limits, breakers, bulkheads; counts shared over the bus
    observe.install(app, config, calls)
    audit.install(app, config)  # before the security middlewares: refusals are audited too

    async def close_streams(app: web.Application) -> None:
        app[keys.STREAMS].stop_all()  # before the bus closes: their Cancels still go out

    app.on_shutdown.append(close_streams)
    app.cleanup_ctx.append(sweeper)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    asyncapi.install(app, config)  # GET /api/asyncapi.json
    controllers = config.gateway.controllers  # one switched off: its routes do not exist
    methods = ("GET", "POST", "PUT", "PATCH", "DELETE")
    # A route's methods added one after another share one resource: one match per call
    # instead of one per method tried before it.
    if controllers.request:
        for method in methods:
            app.router.add_route(method, API_PATH, handle_request)
        for method in methods:
            app.router.add_route(method, formats.EXTENSION_PATH, handle_request)
    if controllers.stream:
        for method in methods:
            app.router.add_route(method, STREAM_PATH, handle_stream)
    if controllers.request:
        install_full(app)  # after the hot routes, which leave "full" to it
    install_security(app, config, sessions=sessions)
    app.cleanup_ctx.append(idempotency_ctx)
    if controllers.command:
        install_commands(app, config)
    install_send(app, config)
    if controllers.file:
        install_files(app, config)
    install_control(app, config)
    install_openapi(app)
    if controllers.track:
        install_track(app)
    app.cleanup_ctx.append(live_ctx)  # after the bus and the session store are up
    return app
