"""``POST /api/auth/{register|login|refresh|logout|delete}/{channel}/{type}``.

The provider is the channel's system, reached over the bus like any other: register, login
and delete become a Request for path ``{action}/{type}`` (``login/password``). A successful
answer is mapped into claims (``tokens.NAME.claims``), a session is stored on the bus, and the
caller gets ``{"access_token", "refresh_token", "token_type": "Bearer", "expires_in"}``.

Query flags (all default false): ``cookie`` puts the tokens in HttpOnly cookies instead of the
body; ``remember`` gives the refresh token the long lifetime and makes the cookies persistent;
``thru`` also returns the provider's answer (``data``), less the sources of removed claims.

Refresh needs no provider: the session holds the claims. Each refresh token is good once;
presenting a used one again revokes the whole session (its access tokens with it).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from typing import Any

import msgspec
from aiohttp import web

from busgate.bus.sessions import Session, Sessions
from busgate.contracts import errors
from busgate.contracts.codec import json_decode, json_encode
from busgate.contracts.config import Channel
from busgate.contracts.paths import refusal
from busgate.contracts.wire import Identity, Request
from busgate.edge import envelope, keys
from busgate.edge.auth import AuthContext, clear_token_cookies, set_token_cookies, unauthorized
from busgate.edge.middleware.auth import authenticate
from busgate.edge.tokens import TokenService, map_claims, strip_removed

log = logging.getLogger("busgate.edge.auth")

ACTIONS = ("register", "login", "refresh", "logout", "delete")
ROUTE = "/api/auth/{action}/{channel}/{type}"
_TRUE = ("1", "true", "yes", "on")


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() in _TRUE


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json_encode(data), content_type="application/json")


def _provider_error(status: int, body: bytes) -> errors.BusgateError:
    """A provider's 4xx, passed on with its status and message; anything else is a 502."""
    if status >= 500 or status < 400:
        return errors.UpstreamError(f"the auth provider answered {status}")
    message = "the auth provider refused the call"
    code = "unauthorized" if status == 401 else "auth_refused"
    try:
        data = json_decode(body)
    except (msgspec.DecodeError, RecursionError):
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message", message))
        code = str(error.get("code", code))
    elif isinstance(error, str):
        message = error
    exc = errors.BusgateError(message)
    exc.status, exc.code = status, code
    return exc


class AuthApi:
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx

    @property
    def sessions(self) -> Sessions:
        if self.ctx.sessions is None:
            raise errors.BusUnavailable("the session store is not ready; try again shortly")
        return self.ctx.sessions

    def _channel(self, name: str) -> tuple[Channel, TokenService]:
        channel = self.ctx.config.channels.get(name)
        service = self.ctx.channel_tokens.get(name)
        if channel is None or service is None:
            raise errors.NotFound(f"no auth channel {name!r}")
        return channel, service

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # The edge cancels handlers whose client went away (for streams); session writes
        # (create, rotate, revoke) must not stop half-way, so auth actions run to the end.
        return await asyncio.shield(self._dispatch(request))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        action = info["action"]
        if (why := refusal(info["type"])) is not None:  # it becomes the provider's path
            raise errors.BadRequest(why)
        channel, service = self._channel(info["channel"])
        match action:
            case "login" | "register":
                return await self.login(request, channel, service, action)
            case "refresh":
                return await self.refresh(request, service)
            case "logout":
                return await self.logout(request, service)
            case "delete":
                return await self.delete(request, channel, service)
        raise errors.NotFound(f"no auth action {action!r}; use one of {list(ACTIONS)}")

    # -- the provider ----------------------------------------------------------------

    async def _call_provider(
        self, request: web.Request, body: bytes, identity: Identity | None = None
    ) -> Any:
        config = self.ctx.config
        info = request.match_info
        channel = config.channels[info["channel"]]
        timeout = config.timeout_for(info["channel"])
        id_, client_id = envelope.call_ids(request, config.gateway.accept_request_id)
        req = Request(
            id=id_,
            client_id=client_id,
            traceparent=request[keys.TRACEPARENT],
            channel=info["channel"],
            system=channel.system,
            path=f"{info['action']}/{info['type']}",
            method="POST",
            headers={"content-type": "application/json"},
            body=body,
            identity=identity,
            origin=envelope.origin_of(request),
            deadline=time.time() + timeout,
        )
        reply = await request.app[keys.BUS].request(req)
        if reply.error is not None:
            raise errors.Remote(reply.error)
        if reply.status >= 300:
            raise _provider_error(reply.status, reply.body)
        try:
            return json_decode(reply.body) if reply.body else {}
        except (msgspec.DecodeError, RecursionError):
            raise errors.UpstreamError("the auth provider answered something not JSON") from None

    async def _credentials(self, request: web.Request, action: str) -> bytes:
        """The body for the provider: JSON, or for login ``Authorization: Basic``."""
        header = request.headers.get("Authorization", "")
        if action == "login" and header[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
            except ValueError:  # binascii.Error, UnicodeDecodeError, or stray non-ASCII bytes
                raise errors.Unauthorized("malformed Basic credentials") from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise errors.Unauthorized("malformed Basic credentials")
            return json_encode({"username": username, "password": password})
        body = await envelope.read_body(request, self.ctx.config.gateway.max_body)
        try:
            data = json_decode(body)
        except msgspec.DecodeError:
            data = None
        if not isinstance(data, dict):
            raise errors.BadRequest("send a JSON object (or Basic credentials to log in)")
        if action == "login" and not (
            isinstance(data.get("username"), str) and isinstance(data.get("password"), str)
        ):
            raise errors.BadRequest('login needs {"username": …, "password": …}')
        return body

    # -- answers ---------------------------------------------------------------------

    def _tokens_answer(
        self,
        request: web.Request,
        service: TokenService,
        session: Session,
        *,
        cookie: bool,
        data: Any = None,
    ) -> web.Response:
        access = service.access(session.subject, session.claims, session.id)
        refresh = service.refresh(session.subject, session.id, session.refresh_id, session.expires)
        body: dict[str, Any] = {"token_type": "Bearer", "expires_in": service.config.expiration}
        if not cookie:
            body["access_token"] = access
            body["refresh_token"] = refresh
        if data is not None:
            body["data"] = data
        csrf = self.ctx.config.gateway.csrf
        csrf_token = service.csrf_token(session.id) if cookie and csrf.enabled else None
        if csrf_token:
            body["csrf_token"] = csrf_token
        response = _json(body)
        if cookie:
            max_age = int(session.expires - time.time()) if session.remember else None
            set_token_cookies(response, service, access=access, refresh=refresh, max_age=max_age)
            if csrf_token:
                c = service.config.cookies
                response.set_cookie(
                    csrf.cookie,
                    csrf_token,
                    path="/",
                    domain=c.domain or None,
                    secure=c.secure,
                    samesite=c.same_site,
                    max_age=max_age,
                )
        response.headers["Cache-Control"] = "no-store"
        return response

    # -- actions ---------------------------------------------------------------------

    async def login(
        self, request: web.Request, channel: Channel, service: TokenService, action: str
    ) -> web.StreamResponse:
        body = await self._credentials(request, action)
        if action == "login" and (guards := request.app.get(keys.GUARDS)) is not None:
            await guards.login(request, body)  # 429 past the attempts per IP and username
        answer = await self._call_provider(request, body)
        session_id = secrets.token_urlsafe(16)
        claims = map_claims(
            service.config.claims,
            answer,
            session_id=session_id,
            origin=envelope.origin_of(request),
        )
        subject = claims.pop("sub", None)
        if not subject:
            raise errors.UpstreamError("the auth provider's answer names no subject")
        subject = str(subject)
        remember = _flag(request, "remember")
        now = time.time()
        lifetime = service.config.long_expiration if remember else service.config.refresh_expiration
        session = Session(
            id=session_id,
            subject=subject,
            token=service.name,
            claims=claims,
            refresh_id=secrets.token_urlsafe(16),
            created=now,
            expires=now + min(lifetime, service.config.session_max_age),
            remember=remember,
        )
        await self.sessions.create(session)
        data = strip_removed(service.config.claims, answer) if _flag(request, "thru") else None
        return self._tokens_answer(
            request, service, session, cookie=_flag(request, "cookie"), data=data
        )

    async def _refresh_token(self, request: web.Request, service: TokenService) -> tuple[str, bool]:
        if request.body_exists and request.content_type == "application/json":
            body = await envelope.read_body(request, 64 * 1024)
            try:
                data = json_decode(body)
            except msgspec.DecodeError:
                data = None
            token = data.get("refresh_token") if isinstance(data, dict) else None
            if isinstance(token, str) and token:
                return token, False
        token = request.cookies.get(service.config.cookies.refresh)
        if token:
            return token, True
        raise errors.Unauthorized('send {"refresh_token": …} or the refresh cookie')

    async def refresh(self, request: web.Request, service: TokenService) -> web.StreamResponse:
        try:
            token, from_cookie = await self._refresh_token(request, service)
            payload = service.verify_refresh(token)
        except errors.Unauthorized as exc:
            return unauthorized(exc, request.get(keys.REQUEST_ID))
        sessions = self.sessions
        session_id = str(payload["sid"])
        found = await sessions.get(session_id)
        if found is None or found[0].revoked or sessions.is_revoked(session_id, found[0].subject):
            return unauthorized(
                errors.Unauthorized("the session has ended; log in again"),
                request.get(keys.REQUEST_ID),
            )
        session, revision = found
        now = time.time()
        end = session.created + service.config.session_max_age
        if now >= end:
            return unauthorized(
                errors.Unauthorized("the session has reached its maximum age; log in again"),
                request.get(keys.REQUEST_ID),
            )
        if payload["rti"] != session.refresh_id:
            await sessions.revoke(session_id)
            log.warning("refresh token reused: session %s revoked", session_id)
            return unauthorized(
                errors.Unauthorized("refresh token already used; the session is revoked"),
                request.get(keys.REQUEST_ID),
            )
        config = service.config
        lifetime = config.long_expiration if session.remember else config.refresh_expiration
        rotated = msgspec.structs.replace(
            session, refresh_id=secrets.token_urlsafe(16), expires=min(now + lifetime, end)
        )
        if not await sessions.replace(rotated, revision):
            # Another refresh with the same token won the race: that is a reuse too.
            await sessions.revoke(session_id)
            log.warning("concurrent refresh: session %s revoked", session_id)
            return unauthorized(
                errors.Unauthorized("refresh token already used; the session is revoked"),
                request.get(keys.REQUEST_ID),
            )
        cookie = from_cookie or _flag(request, "cookie")
        return self._tokens_answer(request, service, rotated, cookie=cookie)

    async def logout(self, request: web.Request, service: TokenService) -> web.StreamResponse:
        header = request.headers.get(service.config.header, "")
        scheme, _, token = header.partition(" ")
        from_cookie = False
        if scheme.lower() != "bearer" or not token.strip():
            token = request.cookies.get(service.config.cookies.access, "")
            from_cookie = True
        if not token:
            return unauthorized(
                errors.Unauthorized("send the access token to log out"),
                request.get(keys.REQUEST_ID),
                missing=True,
            )
        try:
            payload = service.session_of(token.strip())
        except errors.Unauthorized as exc:
            return unauthorized(exc, request.get(keys.REQUEST_ID))
        session_id = payload.get("sid")
        if payload.get("typ") != "access" or not isinstance(session_id, str):
            return unauthorized(
                errors.Unauthorized("not an access token of this gateway"),
                request.get(keys.REQUEST_ID),
            )
        await self.sessions.revoke(
            session_id, subject=str(payload.get("sub", "")), expires=float(payload["exp"])
        )
        response = _json({"status": "logged_out"})
        if from_cookie or _flag(request, "cookie"):
            clear_token_cookies(response, service)
        return response

    async def delete(
        self, request: web.Request, channel: Channel, service: TokenService
    ) -> web.StreamResponse:
        try:
            identity, _ = await authenticate(request, service, self.ctx)
        except errors.Unauthorized as exc:
            return unauthorized(exc, request.get(keys.REQUEST_ID))
        if identity is None or identity.session_id is None:
            return unauthorized(
                errors.Unauthorized("log in to delete the account"),
                request.get(keys.REQUEST_ID),
                missing=identity is None,
            )
        body = await envelope.read_body(request, self.ctx.config.gateway.max_body)
        await self._call_provider(request, body, identity)
        # Every session of the account ends, on every edge -- not only the caller's.
        await self.sessions.revoke_subject(identity.subject)
        response = _json({"status": "deleted"})
        clear_token_cookies(response, service)
        return response
