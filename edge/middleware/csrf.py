"""CSRF, double-submit cookie: a state-changing call that a browser could make on its own
(it carries an auth cookie and no ``Authorization`` header) must repeat the CSRF cookie's
value in the CSRF header. The cookie is set, readable by scripts, with the auth cookies.

Login and register are exempt (there is no session yet to ride on); bearer-token and API-key
calls are exempt (a browser never adds those headers by itself).
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Handler

from busgate.contracts import errors
from busgate.contracts.config import Csrf

SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_EXEMPT = ("/api/auth/login/", "/api/auth/register/")


def csrf_middleware(
    csrf: Csrf, auth_cookies: frozenset[str], skip_headers: frozenset[str]
) -> web.middleware:  # type: ignore[valid-type]
    cookie_name, header_name = csrf.cookie, csrf.header

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in SAFE or request.path.startswith(_EXEMPT):
            return await handler(request)
        headers = request.headers
        if any(h in headers for h in skip_headers):
            return await handler(request)
        cookies = request.cookies
        if auth_cookies.isdisjoint(cookies):
            return await handler(request)
        sent = headers.get(header_name, "")
        expected = cookies.get(cookie_name, "")
        if not sent or not expected or not hmac.compare_digest(sent, expected):
            raise errors.Forbidden(f"missing or wrong CSRF token: send the {header_name} header")
        return await handler(request)

    return middleware
