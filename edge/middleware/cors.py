"""CORS: preflights are answered here, at the edge, and never cross the bus; actual calls
from an allowed origin get the ``Access-Control-*`` headers just before their headers are
sent (``on_response_prepare``), so error answers and SSE streams carry them too.

A preflight from an origin that is not allowed, or asking for a method or header that is
not allowed, is answered 403 without any ``Access-Control-Allow-*`` header.
"""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.typedefs import Handler

from busgate.contracts import errors
from busgate.contracts.config import Cors
from busgate.edge import keys
from busgate.edge.responses import error_response


class CorsPolicy:
    def __init__(self, cors: Cors) -> None:
        self.cors = cors
        self.any_origin = "*" in cors.origins
        self.origins = frozenset(o.rstrip("/") for o in cors.origins if o != "*")
        self.patterns = [re.compile(p) for p in cors.origin_patterns]
        self.methods = frozenset(cors.methods) | {"OPTIONS"}
        self.headers = frozenset(h.lower() for h in cors.headers)
        self.allow_methods = ", ".join(cors.methods)
        self.expose = ", ".join(cors.expose_headers)
        self.max_age = str(cors.max_age)

    def allows(self, origin: str) -> bool:
        if not origin.isascii():  # browsers send IDNs as punycode; never echo other bytes
            return False
        return (
            self.any_origin
            or origin in self.origins
            or any(p.fullmatch(origin) for p in self.patterns)
        )

    def _allow_origin(self, response: web.StreamResponse, origin: str) -> None:
        h = response.headers
        if self.any_origin and not self.cors.credentials:
            h["Access-Control-Allow-Origin"] = "*"
        else:
            h["Access-Control-Allow-Origin"] = origin
            h.add("Vary", "Origin")
        if self.cors.credentials:
            h["Access-Control-Allow-Credentials"] = "true"

    def preflight(self, request: web.Request, origin: str) -> web.Response:
        method = request.headers.get("Access-Control-Request-Method", "").upper()
        asked = [
            h.strip().lower()
            for h in request.headers.get("Access-Control-Request-Headers", "").split(",")
            if h.strip()
        ]
        refused = (
            "origin"
            if not self.allows(origin)
            else "method"
            if method not in self.methods
            else "headers"
            if not self.headers.issuperset(asked)
            else ""
        )
        if refused:
            response = error_response(
                errors.Forbidden(f"CORS preflight refused: {refused} not allowed"),
                request.get(keys.REQUEST_ID),
            )
            response.headers.add("Vary", "Origin")
            return response
        response = web.Response(status=204)
        self._allow_origin(response, origin)
        h = response.headers
        h["Access-Control-Allow-Methods"] = self.allow_methods
        if asked:
            h["Access-Control-Allow-Headers"] = ", ".join(asked)
        h["Access-Control-Max-Age"] = self.max_age
        return response

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is None or not self.allows(origin):
            return
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return  # a preflight: answered whole by ``preflight``, refusals without allows
        self._allow_origin(response, origin)
        if self.expose:
            response.headers["Access-Control-Expose-Headers"] = self.expose


def cors_middleware(policy: CorsPolicy) -> web.middleware:  # type: ignore[valid-type]
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS":
            origin = request.headers.get("Origin")
            if origin is not None and "Access-Control-Request-Method" in request.headers:
                return policy.preflight(request, origin)
        return await handler(request)

    return middleware
