"""Gives each call its request id and trace context, and returns them when configured."""

from __future__ import annotations

from aiohttp import web

from busgate.contracts.config import Gateway
from busgate.edge.ids import IdFactory
from busgate.edge.keys import REQUEST_ID, TRACE_ID, TRACEPARENT

__all__ = ["REQUEST_ID", "TRACEPARENT", "TRACE_ID", "CallIds"]


class CallIds:
    """The ids half of the front middleware (``edge.middleware.front``): ``assign`` before the
    handler runs, ``stamp`` on whatever answer comes back, error answers included."""

    __slots__ = ("accept_id", "accept_trace", "id_header", "ids", "mode", "trace_header")

    def __init__(self, gateway: Gateway, ids: IdFactory) -> None:
        self.ids = ids
        self.id_header = gateway.request_id_header
        self.trace_header = gateway.trace_id_header
        self.accept_id = gateway.accept_request_id
        self.accept_trace = gateway.accept_trace
        self.mode = gateway.return_ids

    def assign(self, request: web.Request, sampled: bool = True) -> tuple[str, str, str, str]:
        """Returns the call's span context (``IdFactory.context``); ``sampled``: whether a
        new trace (the client sent none) is recorded."""
        headers = request.headers
        ids = self.ids
        request[REQUEST_ID] = ids.request_id(
            headers.get(self.id_header) if self.accept_id else None
        )
        context = ids.context(headers.get("traceparent") if self.accept_trace else None, sampled)
        trace_id, span_id, _, flags = context
        request[TRACEPARENT] = f"00-{trace_id}-{span_id}-{flags}"
        request[TRACE_ID] = trace_id
        return context

    def stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        """Add the ids to an answer whose headers are not sent yet."""
        mode = self.mode
        if mode == "always" or (mode == "error" and response.status >= 400):
            response.headers[self.id_header] = request[REQUEST_ID]
            response.headers[self.trace_header] = request[TRACE_ID]
