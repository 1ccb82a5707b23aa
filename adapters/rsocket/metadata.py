"""What travels in an RSocket request's metadata: the route and the request's ids.

Composite metadata (``message/x.rsocket.composite-metadata.v0``) with the saga path as the
routing entry (``message/x.rsocket.routing.v0``) and :data:`META_MIME`, a JSON object with
``requestId``, ``traceId``, ``traceparent`` (and ``tracestate``), channel, path, method and
identity: what an RPC runner gets as ``meta`` and headers. Shared by the adapter and the
sample runner.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
from rsocket.extensions.composite_metadata import CompositeMetadata
from rsocket.extensions.helpers import composite, metadata_item, route

from busgate.contracts import errors
from busgate.contracts.codec import json_encode
from busgate.contracts.wire import Request

META_MIME = b"message/x.busgate.meta+json"
MAX_ROUTE = 255
"""Bytes of a routing tag: RSocket encodes its length in one byte."""
_decode = msgspec.json.Decoder().decode


def trace_id_of(traceparent: str) -> str:
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else ""


def request_metadata(req: Request) -> bytes:
    path = req.path.strip("/")
    if not path or len(path.encode()) > MAX_ROUTE:
        raise errors.BadRequest(f"an RSocket route is 1 to {MAX_ROUTE} bytes")
    meta: dict[str, Any] = {
        "requestId": req.shown_id,
        "traceId": trace_id_of(req.traceparent),
        "traceparent": req.traceparent,
        "channel": req.channel,
        "path": req.path,
        "method": req.method,
        "identity": msgspec.to_builtins(req.identity) if req.identity else None,
    }
    if req.tracestate:
        meta["tracestate"] = req.tracestate
    if req.query:
        meta["query"] = req.query
    return bytes(composite(route(path), metadata_item(json_encode(meta), META_MIME)))


def meta_of(metadata: CompositeMetadata) -> dict[str, Any]:
    """The runner's side: the :data:`META_MIME` entry, or ``{}``."""
    for item in metadata.find_by_mimetype(META_MIME):
        with contextlib.suppress(msgspec.DecodeError):
            found = _decode(item.content)
            if isinstance(found, dict):
                return found
    return {}
