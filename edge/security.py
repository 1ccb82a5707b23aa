"""Wires the security concerns into an edge app: CORS, CSRF, auth (one middleware each, in
``edge.middleware``), the auth API routes and the shared session store.

Middlewares run after the ids and errors ones, so refusals get request ids and the JSON
error shape; CORS headers on actual answers are added in ``on_response_prepare``, so errors
and SSE streams carry them too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from busgate.bus.sessions import Sessions
from busgate.contracts.config import Config
from busgate.edge import keys
from busgate.edge.auth import AuthContext
from busgate.edge.auth_api import ROUTE, AuthApi
from busgate.edge.middleware.auth import auth_middleware
from busgate.edge.middleware.cors import CorsPolicy, cors_middleware
from busgate.edge.middleware.csrf import csrf_middleware


async def _prune_forever(store: Sessions, every: float = 60.0) -> None:
    """The stores expire old sessions silently; the local copy forgets them here."""
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            await asyncio.sleep(every)
            store.prune()


def install(app: web.Application, config: Config, *, sessions: Sessions | None = None) -> None:
    """Call after the bus's cleanup context is registered (the session store needs it)."""
    ctx = AuthContext(config)
    app[keys.AUTH] = ctx
    gateway = config.gateway
    cors = gateway.cors
    if cors.enabled and (cors.origins or cors.origin_patterns):  # else no cost per call
        policy = CorsPolicy(gateway.cors)
        app.middlewares.append(cors_middleware(policy))
        app.on_response_prepare.append(policy.on_prepare)
    if gateway.csrf.enabled and ctx.tokens:
        skip = frozenset(
            h
            for service in ctx.tokens.values()
            for h in (service.config.header, service.config.api_key_header)
            if h
        )
        app.middlewares.append(csrf_middleware(gateway.csrf, ctx.tokens.values(), skip))
    if ctx.channel_tokens or any(ch.paths for ch in config.channels.values()):
        app.middlewares.append(auth_middleware(ctx, app.get(keys.ALIASES)))
        ctx.checking = True
    if not ctx.tokens:
        return

    async def sessions_ctx(app: web.Application) -> AsyncIterator[None]:
        store = sessions or Sessions.open(app[keys.BUS], max_age=ctx.session_ttl)
        if sessions is None:
            await store.start()
        ctx.sessions = store
        pruning = asyncio.create_task(_prune_forever(store))
        yield
        pruning.cancel()
        ctx.sessions = None
        if sessions is None:
            await store.close()
        await ctx.close()

    app.cleanup_ctx.append(sessions_ctx)
    if gateway.controllers.auth:
        app.router.add_post(ROUTE, AuthApi(ctx).handle)
