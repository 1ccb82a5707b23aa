"""Deeply nested JSON (issue 8, item 4): msgspec raised RecursionError near 1000 levels, a
500. The edge answers 400 past MAX_DEPTH, wherever it reads a client's JSON."""

from __future__ import annotations

import logging

import pytest

from busgate.contracts.codec import decode
from busgate.contracts.wire import Request
from busgate.edge.json_body import MAX_DEPTH, depth
from tests.edge.auth_support import secured_fixture, session_store_fixture  # noqa: F401

JSON = {"Content-Type": "application/json"}


def nested(levels: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * levels + close * levels


def objects(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


@pytest.mark.parametrize(
    "body",
    [nested(1000), nested(5000), objects(1000), objects(MAX_DEPTH + 1), nested(MAX_DEPTH + 1)],
)
@pytest.mark.parametrize("route", ["/api/request/demo/echo", "/api/stream/demo/count"])
async def test_too_deep_is_400(edge, caplog, body, route):
    client, bus = await edge()
    caplog.set_level(logging.WARNING)
    resp = await client.post(route, data=body, headers=JSON)
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "bad_request" and "nested deeper" in error["message"]
    assert not [m for _, d, _ in bus.sent if isinstance(m := decode(d), Request)]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_as_deep_as_allowed_passes(edge):
    client, _ = await edge()
    pairs = MAX_DEPTH // 2  # arrays and objects, MAX_DEPTH levels in all
    body = b'[1,{"k":' * pairs + b"null" + b"}]" * pairs
    resp = await client.post("/api/request/demo/echo", data=body, headers=JSON)
    assert resp.status == 200, await resp.text()
    assert await resp.read() == body


@pytest.mark.parametrize("action", ["login", "register", "refresh", "delete"])
async def test_auth_api_bodies_too(secured, action):
    app = await secured()
    resp = await app.client.post(
        f"/api/auth/{action}/auth/password", data=nested(1000), headers=JSON
    )
    assert resp.status in (400, 401), await resp.text()
    assert resp.status == 400 or action in ("refresh", "delete")
    assert not [c for c in app.provider.calls if c.path.startswith(action)]


def test_depth_counts_levels():
    assert depth(1) == 0
    assert depth([]) == 1
    assert depth({"a": [1, {"b": []}]}) == 4
    assert depth([[]] * 3) == 2
