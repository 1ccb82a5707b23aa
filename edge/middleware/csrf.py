"""CSRF, double-submit cookie bound to the session: a state-changing call that a browser could
make on its own (it carries an auth cookie and no ``Authorization`` header) must send the
session's CSRF token in the CSRF header. The login sets that token in a cookie scripts can
read; it is an HMAC of the session id (``TokenService.csrf_token``), so the header is checked
against the session the auth cookie names -- not against the CSRF cookie, which an attacker
able to set cookies (a sibling subdomain, plain HTTP) could plant with a matching header.

Login and register are exempt (there is no session yet to ride on); bearer-token and API-key
calls are exempt (a browser never adds those headers by itself).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler

from busgate.contracts import errors
from busgate.contracts.config import Csrf
from busgate.edge.tokens import TokenService

SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_EXEMPT = ("/api/auth/login/", "/api/auth/register/")


def csrf_middleware(
    csrf: Csrf, services: Iterable[TokenService], skip_headers: frozenset[str]
) -> web.middleware:  # type: ignore[valid-type]
    header_name = csrf.header
    cookies_of = [
        (service, (service.config.cookies.access, service.config.cookies.refresh))
        for service in services
    ]
    auth_cookies = frozenset(name for _, names in cookies_of for name in names)

    def expected(request: web.Request) -> list[str]:
        """The CSRF tokens of the sessions the request's auth cookies name."""
        tokens = []
        for service, names in cookies_of:
            for name in names:
                token = request.cookies.get(name)
                if token and (sid := service.session_id_of(token)) is not None:
                    tokens.append(service.csrf_token(sid))
        return tokens

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in SAFE or request.path.startswith(_EXEMPT):
            return await handler(request)
        headers = request.headers
        if any(h in headers for h in skip_headers):
            return await handler(request)
        if auth_cookies.isdisjoint(request.cookies):
            return await handler(request)
        sent = headers.get(header_name, "")
        # compare_digest refuses non-ASCII str (TypeError): such a token is wrong anyway.
        if not sent.isascii() or not any(hmac.compare_digest(sent, t) for t in expected(request)):
            raise errors.Forbidden(f"missing or wrong CSRF token: send the {header_name} header")
        return await handler(request)

    return middleware
