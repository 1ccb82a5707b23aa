"""Checks the caller of ``/api/{request,stream,…}/{channel}/{path}`` against the path's rules.

Credentials, in order: ``Authorization: Bearer`` (the token's ``header``), the API-key header,
the access-token cookie, a verified client certificate (``edge.cert_identity``). A missing or
invalid token is 401 with ``WWW-Authenticate`` (unless
the token ``can_ignore`` it, when the call goes on anonymously and only public paths let it
through); a missing role is 403; a disabled path is 404. The identity goes on the request
(``keys.IDENTITY``) for the envelope. Routes without a channel and path pass through.

Hot path for a repeated bearer token: the rule lookup, a cache hit in the token service and
a dict lookup for revocation — no signature check, no allocation beyond the header read.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler

from busgate.contracts import errors
from busgate.contracts.paths import refusal
from busgate.contracts.wire import Identity
from busgate.edge import keys
from busgate.edge.access import Need
from busgate.edge.aliases import ChannelAliases
from busgate.edge.auth import AuthContext, set_token_cookies, unauthorized
from busgate.edge.tokens import TokenService


async def authenticate(
    request: web.Request, service: TokenService, ctx: AuthContext
) -> tuple[Identity | None, str | None]:
    """(identity, the access token if it came by cookie); raises Unauthorized."""
    config = service.config
    header = request.headers.get(config.header)
    cookie_token: str | None = None
    if header is not None:
        if header.startswith("Bearer "):  # the common spelling: one slice, no more
            token = header[7:]
        else:
            scheme, _, token = header.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise errors.Unauthorized(f"expected '{config.header}: Bearer <token>'")
    elif config.api_key_header and (key := request.headers.get(config.api_key_header)):
        identity = service.api_key(key)
        if identity is None:
            raise errors.Unauthorized("the API key is not valid")
        return identity, None
    else:
        cookie_token = request.cookies.get(config.cookies.access)
        if not cookie_token:  # last: a verified client certificate (mTLS)
            return (ctx.certs.of(request) if ctx.certs is not None else None), None
        token = cookie_token
    identity = service.cached(token) or await service.verify(token)
    if ctx.is_revoked(identity):
        raise errors.Unauthorized("the session has been revoked")
    return identity, cookie_token


def _renew(
    response: web.StreamResponse, service: TokenService, ctx: AuthContext, token: str
) -> None:
    """A cookie-borne access token within ``grace`` of its expiry gets a successor."""
    expires = service.expiry(token)
    if expires is None or expires - time.time() > service.config.grace or response.prepared:
        return
    sessions = ctx.sessions
    identity = service.cached(token)
    if sessions is None or identity is None or identity.session_id is None:
        return
    session = sessions.cached(identity.session_id)
    if session is None or session.revoked:
        return
    access = service.access(session.subject, session.claims, session.id)
    set_token_cookies(response, service, access=access)


def auth_middleware(
    ctx: AuthContext, aliases: Mapping[str, ChannelAliases] | None = None
) -> web.middleware:  # type: ignore[valid-type]
    access = ctx.access
    channel_tokens = ctx.channel_tokens
    aliases = aliases if aliases is not None else {}  # the app's: a refresh swaps its content
    certs = ctx.certs

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        info = request.match_info
        channel = info.get("channel")
        path = info.get("path")
        if channel is None or path is None:
            return await handler(request)
        rules = access.get(channel)
        if rules is None:  # unknown channel: the handler answers 404
            return await handler(request)
        if (why := refusal(path)) is not None:  # before the rules: they judge this path
            raise errors.BadRequest(why)
        need = rules.need(path, request.method)
        if need.disabled:
            raise errors.NotFound(f"no route for {request.path}")
        target: Need | None = None  # an alias's target: its rules apply too
        if aliases and (table := aliases.get(channel)) and (found := table.match(path)):
            request[keys.ALIAS] = found
            target = rules.need(found.target, request.method)
            if target.disabled:
                raise errors.NotFound(f"no route for {request.path}")
        service = channel_tokens.get(channel)
        if service is None:
            if certs is not None and (identity := certs.of(request)) is not None:
                request[keys.IDENTITY] = identity  # no token here, but runners learn who
            return await handler(request)
        try:
            identity, cookie_token = await authenticate(request, service, ctx)
        except errors.Unauthorized as exc:
            if not service.config.can_ignore:
                return unauthorized(exc, request.get(keys.REQUEST_ID))
            identity, cookie_token = None, None
        if identity is None:
            if need.public and (target is None or target.public):
                return await handler(request)
            return unauthorized(
                errors.Unauthorized("this path needs a token"),
                request.get(keys.REQUEST_ID),
                missing=True,
            )
        if need.roles is not None and need.roles.isdisjoint(identity.roles):
            raise errors.Forbidden(f"this path needs one of the roles {sorted(need.roles)}")
        if target is not None and target.roles is not None:
            if target.roles.isdisjoint(identity.roles):
                raise errors.Forbidden(f"this path needs one of the roles {sorted(target.roles)}")
        request[keys.IDENTITY] = identity
        response = await handler(request)
        if cookie_token is not None and service.config.grace:
            _renew(response, service, ctx, cookie_token)
        return response

    return middleware
