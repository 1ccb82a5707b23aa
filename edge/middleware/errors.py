"""The one place where failures become HTTP responses.

A BusgateError becomes its status with a JSON body; aiohttp's own HTTP errors (unknown route,
oversized body, …) get the same JSON shape; anything else is logged with its stack and answers
a plain 500 — the client never sees a trace. ``error_answer`` runs in the front middleware
(``edge.middleware.front``), around everything else.
"""

from __future__ import annotations

import logging

from aiohttp import web

from busgate.contracts import errors
from busgate.edge.keys import ERROR_LEVELS, REQUEST_ID
from busgate.edge.responses import error_response

log = logging.getLogger("busgate.edge")

_HTTP_CODES: dict[int, type[errors.BusgateError]] = {
    400: errors.BadRequest,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
}


def shaped_error(request: web.Request, exc: errors.BusgateError) -> web.Response:
    """``exc`` at the error level of the call's channel and path (``edge.error_detail``), for
    the handlers that answer an error themselves (a 429 with its ``RateLimit`` headers)."""
    levels = request.app.get(ERROR_LEVELS)
    detail = levels.level(request) if levels else "full"
    if detail != "full":
        log.info(
            "request %s: %d %s not shown in full: %s",
            request.get(REQUEST_ID),
            exc.status,
            exc.code,
            exc.message,
        )
    return error_response(exc, request.get(REQUEST_ID), detail)


def error_answer(request: web.Request, exc: Exception) -> web.Response | None:
    """The answer for what a handler raised; None for an HTTP redirect (status < 400), which
    the caller raises on for aiohttp to send."""
    if isinstance(exc, errors.BusgateError):
        return shaped_error(request, exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return None
        kind = _HTTP_CODES.get(exc.status)
        if kind is None:
            generic = errors.BusgateError(exc.reason)
            generic.status, generic.code = exc.status, exc.reason.lower().replace(" ", "_")
            mapped = error_response(generic, request.get(REQUEST_ID))
        else:
            message = {
                404: f"no route for {request.path}",
                413: "request body is larger than the limit",
            }.get(exc.status, exc.text or exc.reason)
            mapped = error_response(kind(message), request.get(REQUEST_ID))
        if exc.status == 405 and "Allow" in exc.headers:
            mapped.headers["Allow"] = exc.headers["Allow"]
        return mapped
    log.exception("unexpected error in %s %s", request.method, request.path, exc_info=exc)
    return error_response(errors.BusgateError("internal error"), request.get(REQUEST_ID))
