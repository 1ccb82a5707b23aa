"""Every header value busgate writes is ASCII (issue 8, item 12): ``WWW-Authenticate`` once
carried a raw "…" from an error message, a CORS answer could echo a non-ASCII origin, and
a runner's ``Location`` passed through as it was."""

from __future__ import annotations

import pytest

from busgate.bus.base import Responder
from busgate.contracts.wire import Reply, Request
from tests.edge.auth_support import (  # noqa: F401  (fixtures)
    auth_config,
    secured_fixture,
    session_store_fixture,
)
from tests.raw_http import exchange, request

CORS = {"cors": {"origin_patterns": [r"https?://.*"], "credentials": True}}

ERRORS = [
    request("POST", "/api/auth/refresh/auth/password"),  # 401 whose message has "…"
    request("GET", "/api/request/secure/meta"),  # 401, no token
    request("GET", "/api/request/secure/meta", b"Authorization: Bearer caf\xc3\xa9.x.y"),
    request("GET", "/api/request/secure/meta", b"Authorization: Bearer \xff"),
    request("GET", "/api/request/secure/meta", b"Cookie: busgate_access=caf\xc3\xa9"),
    request(
        "POST",
        "/api/auth/login/auth/password",
        b"Content-Type: application/json",
        body=b'{"username": 1}',
    ),  # 400 "…"
    request("POST", "/api/auth/login/auth/password", b"Authorization: Basic \xc3\xa9"),
    request("GET", "/api/request/secure/old/x"),  # 404
    request("GET", "/api/request/nope/caf%C3%A9"),  # 404 naming a non-ASCII path
    request("GET", "/no/such/caf%C3%A9"),  # aiohttp's 404
    request("GET", "/api/request/demo/caf%C3%A9/%252e%252e"),  # 400 path
    request("GET", "/api/request/demo/x", b"User-Agent: \xff"),  # 400 header bytes
    request("POST", "/api/request/demo/x", b"Content-Type: text/caf\xc3\xa9", body=b"x"),  # 415
    request("GET", "/api/request/demo/x", b"Origin: https://caf\xc3\xa9.example"),
    request("GET", "/api/request/demo/x", b"Origin: https://\xff.example"),
    request(
        "OPTIONS",
        "/api/request/demo/x",
        b"Origin: https://caf\xc3\xa9.example",
        b"Access-Control-Request-Method: GET",
    ),
]


@pytest.mark.parametrize(
    "raw", ERRORS, ids=[r.split(b"\r\n")[0][:40].decode("latin-1") for r in ERRORS]
)
async def test_answers_have_ascii_heads(secured, raw):
    app = await secured(auth_config(gateway=CORS))
    answer = await exchange(app.client.port, raw)
    assert answer.status >= 400 or b"Origin" in raw
    assert answer.head.isascii(), answer.head
    assert all(v.isprintable() for v in answer.headers.values())


async def test_www_authenticate_spells_out_the_ellipsis(secured):
    app = await secured()
    answer = await exchange(app.client.port, request("POST", "/api/auth/refresh/auth/password"))
    assert answer.status == 401
    assert "{'refresh_token': ...}" in answer.headers["www-authenticate"]


async def test_a_runners_non_ascii_header_is_percent_encoded(edge):
    async def handler(req: Request, responder: Responder) -> None:
        headers = {"content-type": "application/json", "location": "/caf\u00e9?q=\u2603"}
        await responder.reply(Reply(id=req.id, status=201, body=b"{}", headers=headers))

    client, _ = await edge(handler=handler)
    answer = await exchange(client.port, request("POST", "/api/request/demo/x", body=b""))
    assert answer.status == 201
    assert answer.head.isascii()
    assert answer.headers["location"] == "/caf%C3%A9?q=%E2%98%83"
