"""Header bytes that are not UTF-8 (issue 8, item 3): aiohttp hands them on as lone
surrogates, which broke the first encoder after them (msgspec, pyjwt, hashlib) with a 500 and
a traceback. Now 400, or 401 for credentials, with the JSON error, and nothing logged at
ERROR. Raw sockets: client libraries refuse to send such bytes."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from busgate.contracts.codec import decode
from busgate.contracts.wire import Request
from tests.edge.auth_support import (  # noqa: F401  (fixtures)
    auth_config,
    secured_fixture,
    session_store_fixture,
)
from tests.raw_http import exchange, request

BAD = b"\xff\xfe\xc3("  # not UTF-8

CASES = [
    ("GET", "/api/request/demo/echo", b"User-Agent: " + BAD, 400),
    ("GET", "/api/request/demo/echo", b"Accept: " + BAD, 400),
    ("GET", "/api/request/demo/echo", b"X-Forwarded-For: " + BAD, 400),
    ("GET", "/api/request/demo/echo", b"Forwarded: for=" + BAD, 400),
    ("GET", "/api/stream/demo/count", b"Last-Event-ID: " + BAD, 400),
    ("GET", "/api/stream/demo/count", b"User-Agent: " + BAD, 400),
    ("GET", "/api/request/secure/meta", b"Authorization: Bearer " + BAD, 401),
    ("GET", "/api/request/secure/meta", b"Authorization: " + BAD, 401),
    ("GET", "/api/request/secure/meta", b"X-Api-Key: " + BAD, 401),
    ("GET", "/api/request/secure/meta", b"Cookie: busgate_access=" + BAD, 401),
    ("POST", "/api/auth/login/auth/password", b"Authorization: Basic " + BAD, 401),
    ("POST", "/api/auth/login/auth/password", b"User-Agent: " + BAD, 400),
    ("POST", "/api/auth/refresh/auth/password", b"Cookie: busgate_refresh=" + BAD, 401),
    ("POST", "/api/auth/logout/auth/password", b"Authorization: Bearer " + BAD, 401),
    ("POST", "/api/auth/logout/auth/password", b"Cookie: busgate_access=" + BAD, 401),
]


def _basic(raw: bytes) -> bytes:
    return b"Authorization: Basic " + base64.b64encode(raw)


CASES += [
    ("POST", "/api/auth/login/auth/password", _basic(b"demo:" + BAD), 401),
    ("POST", "/api/auth/login/auth/password", _basic(BAD + b":x"), 401),
]


@pytest.mark.parametrize(
    ("method", "path", "line", "status"),
    CASES,
    ids=[f"{m} {p.split('/')[2]} {line.split(b':')[0].decode()}" for m, p, line, _ in CASES],
)
async def test_stray_header_bytes_are_a_json_4xx(secured, caplog, method, path, line, status):
    app = await secured(auth_config(gateway={"accept_trace": True}))
    caplog.set_level(logging.WARNING)
    answer = await exchange(app.client.port, request(method, path, line))
    assert answer.status == status, answer.body
    error = json.loads(answer.body)["error"]
    assert error["requestId"] == answer.headers["x-request-id"]
    assert error["code"] in ("bad_request", "unauthorized")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [c for c in app.provider.calls if c.system == "demo"]


async def test_stray_tracestate_bytes_are_400(secured):
    app = await secured(auth_config(gateway={"accept_trace": True}))
    answer = await exchange(
        app.client.port, request("GET", "/api/request/demo/echo", b"tracestate: a=" + BAD)
    )
    assert answer.status == 400
    assert "tracestate" in json.loads(answer.body)["error"]["message"]


async def test_valid_utf8_headers_still_pass(edge):
    client, bus = await edge()
    ua = "Mozilla/5.0 (caf\u00e9 \u2603)".encode()
    answer = await exchange(
        client.port, request("GET", "/api/request/demo/echo", b"User-Agent: " + ua)
    )
    assert answer.status == 200
    (req,) = [m for _, d, _ in bus.sent if isinstance(m := decode(d), Request)]
    assert req.origin.user_agent == ua.decode()
