"""The one place where failures become HTTP responses.

A BusgateError becomes its status with a JSON body; aiohttp's own HTTP errors (unknown route,
oversized body, …) get the same JSON shape; anything else is logged with its stack and answers
a plain 500 — the client never sees a trace.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from contracts import errors
from edge.middleware.ids import REQUEST_ID
from edge.responses import error_response

log = logging.getLogger("busgate.edge")

_HTTP_CODES: dict[int, type[errors.BusgateError]] = {
    400: errors.BadRequest,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.BusgateError as exc:
        return error_response(exc, request.get(REQUEST_ID))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
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
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(errors.BusgateError("internal error"), request.get(REQUEST_ID))
