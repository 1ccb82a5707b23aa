"""Who is calling, for the routes outside channels (commands, sends): the same credentials
and checks as ``edge.middleware.auth``, asked for one named token."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from busgate.contracts import errors
from busgate.contracts.wire import Identity
from busgate.edge import keys
from busgate.edge.auth import unauthorized
from busgate.edge.middleware.auth import authenticate


async def identify(request: web.Request, token: str | None) -> Identity | None:
    """The caller's identity under ``tokens.NAME``, None when it sent no credentials (or the
    route has no token); raises Unauthorized for bad ones."""
    if token is None:
        return None
    ctx = request.app[keys.AUTH]
    service = ctx.tokens[token]
    try:
        identity, _ = await authenticate(request, service, ctx)
    except errors.Unauthorized:
        if service.config.can_ignore:
            return None
        raise
    return identity


def require(identity: Identity | None, roles: frozenset[str] | None) -> Identity:
    """401 without an identity; 403 without one of ``roles`` (None = any caller)."""
    if identity is None:
        raise errors.Unauthorized("this path needs a token")
    if roles is not None and roles.isdisjoint(identity.roles):
        raise errors.Forbidden(f"this path needs one of the roles {sorted(roles)}")
    return identity


def www_authenticate(handler: Handler) -> Handler:
    """Answer an Unauthorized with ``WWW-Authenticate``, as the auth middleware does."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except errors.Unauthorized as exc:
            missing = exc.message == "this path needs a token"
            return unauthorized(exc, request.get(keys.REQUEST_ID), missing=missing)

    return wrapped
