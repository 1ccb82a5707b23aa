"""Turns an HTTP call on ``/api/{request,stream}/{channel}/{path}`` into a bus Request.

The body travels as raw bytes. It is checked once here (size, media type, well-formed JSON)
so that a bad call is refused at the edge, never after crossing the bus.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from busgate.contracts import errors
from busgate.contracts.codec import json_encode
from busgate.contracts.config import Channel, Config
from busgate.contracts.paths import refusal
from busgate.contracts.wire import Kind, Origin, Request
from busgate.edge import aliases
from busgate.edge.headers import checked, header
from busgate.edge.json_body import check_json
from busgate.edge.keys import ALIAS, ALIASES, BUS, IDENTITY, IDS
from busgate.edge.middleware.ids import REQUEST_ID, TRACEPARENT

_EMPTY_OBJECT = b"{}"


def channel_for(config: Config, name: str, method: str) -> Channel:
    channel = config.channels.get(name)
    if channel is None:
        raise errors.NotFound(f"unknown channel {name!r}")
    if method not in channel.methods:
        raise errors.MethodNotAllowed(f"{method} is not allowed on channel {name!r}")
    return channel


def is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def query_payload(request: web.Request) -> bytes:
    """GET and DELETE carry their payload as query parameters: one JSON object."""
    if not request.query:
        return _EMPTY_OBJECT
    payload: dict[str, str | list[str]] = {}
    for key in request.query:
        values = request.query.getall(key)
        payload[key] = values[0] if len(values) == 1 else values
    return json_encode(payload)


async def read_body(request: web.Request, max_body: int) -> bytes:
    """The checked body; ``max_body`` is the effective limit (``Bus.body_limit``)."""
    if request.method in ("GET", "DELETE", "HEAD"):
        return query_payload(request)
    length = request.content_length
    if length is not None and length > max_body:
        raise errors.PayloadTooLarge(
            f"request body of {length} bytes exceeds the limit of {max_body} bytes"
        )
    if not request.body_exists:
        return query_payload(request)
    if not is_json(request.content_type):
        raise errors.UnsupportedMediaType(
            f"content type {request.content_type!r} is not supported; send application/json"
        )
    body = await request.read()
    if len(body) > max_body:
        raise errors.PayloadTooLarge(f"request body exceeds the limit of {max_body} bytes")
    if not body:
        return query_payload(request)
    check_json(body)
    return body


def call_ids(request: web.Request, accept_request_id: bool) -> tuple[str, str]:
    """``(id, client_id)`` of the call's envelope. With ``accept_request_id`` the id the client
    sees may be its own, so another call may reuse it: the bus then correlates by an id of
    this node's own making, and the client's travels beside it (``Request.client_id``)."""
    shown = request[REQUEST_ID]
    if not accept_request_id:
        return shown, ""
    return request.app[IDS].request_id(), shown


def origin_of(request: web.Request) -> Origin:
    return Origin(
        client_ip=request.remote or "",
        user_agent=header(request, "User-Agent") or "",
        forwarded_for=header(request, "X-Forwarded-For") or header(request, "Forwarded") or "",
    )


async def build(request: web.Request, config: Config, kind: Kind) -> Request:
    """The envelope for one call; raises a BusgateError for what the edge refuses."""
    info = request.match_info
    channel = channel_for(config, info["channel"], request.method)
    path = info["path"]
    if (why := refusal(path)) is not None:
        raise errors.BadRequest(why)
    gateway = config.gateway
    body = await read_body(request, request.app[BUS].body_limit(gateway.max_body))
    meta: dict[str, Any] = {}
    if channel.aliases and (found := alias_of(request, info["channel"], path)) is not None:
        body, meta = aliases.apply(request, found, body, request.get(IDENTITY))
        path = found.target
    timeout = config.timeout_for(info["channel"], path)
    forwarded = {
        name: checked(name, value)
        for name in gateway.forward_headers
        if (value := request.headers.get(name)) is not None
    }
    id_, client_id = call_ids(request, gateway.accept_request_id)
    return Request(
        id=id_,
        client_id=client_id,
        kind=kind,
        traceparent=request[TRACEPARENT],
        tracestate=(header(request, "tracestate") or "") if gateway.accept_trace else "",
        channel=info["channel"],
        system=channel.system,
        path=path,
        method=request.method,
        query=dict(request.query) if request.query else {},
        headers=forwarded,
        body=body,
        identity=request.get(IDENTITY),
        origin=origin_of(request),
        deadline=time.time() + timeout,
        resume=header(request, "Last-Event-ID") if kind == "stream" else None,
        meta=meta,
    )


def alias_of(request: web.Request, channel: str, path: str) -> aliases.AliasMatch | None:
    """The alias ``path`` names (matched by the auth middleware, or here), checked against its
    methods; None for an ordinary path."""
    found = request.get(ALIAS)
    if found is None:
        table = request.app[ALIASES].get(channel)
        found = table.match(path) if table is not None else None
    if found is not None and request.method not in found.alias.methods:
        raise errors.MethodNotAllowed(f"{request.method} is not allowed on {path!r}")
    return found
