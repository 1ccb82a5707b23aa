"""Gives each call its request id and trace context, and returns them when configured."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from contracts.config import Gateway
from edge.ids import IdFactory
from edge.keys import REQUEST_ID, TRACE_ID, TRACEPARENT

__all__ = ["REQUEST_ID", "TRACEPARENT", "TRACE_ID", "ids_middleware"]


def ids_middleware(gateway: Gateway, ids: IdFactory) -> web.middleware:  # type: ignore[valid-type]
    id_header = gateway.request_id_header
    trace_header = gateway.trace_id_header
    accept_id = gateway.accept_request_id
    accept_trace = gateway.accept_trace
    mode = gateway.return_ids

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = ids.request_id(request.headers.get(id_header) if accept_id else None)
        traceparent, trace_id = ids.traceparent(
            request.headers.get("traceparent") if accept_trace else None
        )
        request[REQUEST_ID] = request_id
        request[TRACEPARENT] = traceparent
        request[TRACE_ID] = trace_id
        response = await handler(request)
        if mode == "always" or (mode == "error" and response.status >= 400):
            if not response.prepared:
                response.headers[id_header] = request_id
                response.headers[trace_header] = trace_id
        return response

    return middleware
