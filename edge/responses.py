"""The shapes of edge responses: JSON errors and bus replies turned into HTTP."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from busgate.contracts.codec import json_encode
from busgate.contracts.config import ErrorDetail
from busgate.contracts.errors import BusgateError
from busgate.contracts.wire import Reply

JSON = "application/json"

SERVER = "busgate"
"""The ``Server`` header of every answer (set by the front middleware, and by ``edge.sse`` on
streams): the product, not the Python and aiohttp versions an attacker would look up."""

# Headers of a runner's reply that the edge passes on; hop-by-hop ones never.
PASS_HEADERS = ("content-type", "cache-control", "etag", "last-modified", "location")


_VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))


def ascii_value(value: str) -> str:
    """A header value as busgate writes it: visible ASCII and spaces only (RFC 9110 §5.5);
    anything else, from a runner's reply or a client's input, is percent-encoded (UTF-8)."""
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe=_VISIBLE + " ")


def error_body(code: str, message: str, request_id: str | None) -> bytes:
    error: dict[str, str] = {"code": code, "message": message}
    if request_id:
        error["requestId"] = request_id
    return json_encode({"error": error})


def shown_error(exc: BusgateError, request_id: str | None, detail: ErrorDetail) -> bytes | None:
    """The error body a caller sees at ``detail``; None for ``none``."""
    if detail == "none":
        return None
    error: dict[str, str] = {"code": exc.code}
    if detail == "full":
        error["message"] = exc.message
    if request_id:
        error["requestId"] = request_id
    return json_encode({"error": error})


def error_response(
    exc: BusgateError, request_id: str | None, detail: ErrorDetail = "full"
) -> web.Response:
    """The JSON error; ``detail`` (``edge.error_detail``) may leave out the message
    (``code``) or the whole body (``none``: the status and headers only)."""
    body = shown_error(exc, request_id, detail)
    if body is None:
        response = web.Response(status=exc.status)
    else:
        response = web.Response(status=exc.status, body=body, content_type=JSON)
    if exc.retry_after is not None or exc.status in (429, 503):
        response.headers["Retry-After"] = str(int(exc.retry_after or 30))
    return response


def from_reply(reply: Reply) -> web.Response:
    response = web.Response(status=reply.status, body=reply.body)
    for name in PASS_HEADERS:
        value = reply.headers.get(name)
        if value is not None:
            response.headers[name] = ascii_value(value)
    if "content-type" not in reply.headers:
        response.headers["Content-Type"] = JSON
    cookies = reply.headers.get("set-cookie")  # only from systems with pass_cookies
    if cookies is not None:
        for cookie in cookies.split("\n"):
            response.headers.add("Set-Cookie", ascii_value(cookie))
    return response
