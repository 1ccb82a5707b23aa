"""Hostile paths: what the edge checks must be what the runner gets, so every spelling that a
second decoding or a normaliser could turn into another path is refused (400) at the edge."""

from __future__ import annotations

import aiohttp
import pytest
from yarl import URL

from busgate.contracts.codec import decode
from busgate.contracts.paths import refusal
from busgate.contracts.wire import Request
from tests.edge.auth_support import (  # noqa: F401  (fixtures)
    auth_config,
    secured_fixture,
    session_store_fixture,
)
from tests.edge.conftest import make_config

# (raw request target after /api/request/demo/, why it is hostile)
HOSTILE = [
    ("x/%252e%252e/admin/meta", "double-encoded dots"),
    ("x/%252E%252E/admin/meta", "double-encoded dots, upper case"),
    ("x/%252e./admin", "half double-encoded"),
    ("%252e%252e%252fadmin", "double-encoded dots and slash"),
    ("x%252fadmin", "double-encoded slash"),
    ("x%255cadmin", "double-encoded backslash"),
    ("x/%c0%ae%c0%ae/admin", "overlong UTF-8 dots"),
    ("x/%C0%AE%C0%AE/admin", "overlong UTF-8 dots, upper case"),
    ("x/%e0%80%ae/admin", "3-byte overlong dot"),
    ("x/%2e%2e/admin", "encoded dot-dot"),
    ("x/%2E%2E/admin", "encoded dot-dot, upper case"),
    ("x/../admin", "plain dot-dot"),
    ("x/./admin", "plain dot"),
    ("x/%2e/admin", "encoded dot"),
    ("x%5cadmin", "encoded backslash"),
    ("x%5c..%5cadmin", "backslash traversal"),
    ("x;a=b/admin", "path parameter"),
    ("x%3badmin", "encoded semicolon"),
    ("x%00admin", "NUL"),
    ("x%0aadmin", "line feed"),
    ("x%0d%0aX-Injected:%201", "CRLF"),
    ("x%7fadmin", "DEL"),
    ("x%c2%85admin", "C1 control (NEL)"),
    ("x/%20admin", "leading space"),
    ("x/admin%20", "trailing space"),
    ("x/admin%09", "trailing tab"),
    ("x/%e3%80%80admin", "ideographic space"),
    ("x//admin", "empty segment"),
    ("%2fadmin", "leading slash"),
    ("x/%ef%bc%8e%ef%bc%8e/admin", "fullwidth dots (NFKC '..')"),
    ("x/%e2%80%a5/admin", "two-dot leader (NFKC '..')"),
    ("x/a%ef%bc%8fb", "fullwidth solidus"),
]


def requests(bus) -> list[Request]:
    return [m for _, data, _ in bus.sent if isinstance(m := decode(data), Request)]


ALLOWED = ["echo", "a/b/c", "a/b/", "caf%C3%A9", "a%3Fb", "a%23b", "50%25off", "a.b/..c/c..", "~x"]


@pytest.mark.parametrize("raw", [raw for raw, _ in HOSTILE], ids=[why for _, why in HOSTILE])
async def test_hostile_paths_are_400_and_never_cross_the_bus(edge, raw):
    client, bus = await edge()
    url = URL(f"{client.make_url('/')}api/request/demo/{raw}", encoded=True)
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 400, (raw, await resp.text())
        body = await resp.json()
    assert body["error"]["code"] == "bad_request"
    assert body["error"]["requestId"] == resp.headers["X-Request-Id"]
    assert requests(bus) == []


@pytest.mark.parametrize("raw", ["x/%252e%252e/admin/meta", "x/%c0%ae%c0%ae/admin", "x//admin"])
async def test_hostile_stream_paths_are_400(edge, raw):
    client, bus = await edge()
    url = URL(f"{client.make_url('/')}api/stream/demo/{raw}", encoded=True)
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "bad_request"
    assert requests(bus) == []


async def test_hostile_auth_api_type_is_400(secured):
    app = await secured(auth_config())
    url = URL(f"{app.client.make_url('/')}api/auth/login/auth/%252e%252e", encoded=True)
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"username": "demo", "password": "x"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "bad_request"
    assert app.provider.calls == []


async def test_secured_channel_refuses_before_the_rules(secured):
    """A non-admin caller cannot reach admin/* by any spelling: 400, not 200 or 403."""
    app = await secured()
    token = (await app.login("demo"))["access_token"]
    url = URL(f"{app.client.make_url('/')}api/request/secure/x/%252e%252e/admin/meta", encoded=True)
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 400
    assert [c.system for c in app.provider.calls] == ["auth"]  # the login only


@pytest.mark.parametrize("raw", ALLOWED)
async def test_unusual_but_safe_paths_cross_as_decoded_once(edge, raw):
    client, bus = await edge(make_config())
    url = URL(f"{client.make_url('/')}api/request/demo/{raw}", encoded=True)
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200, await resp.text()
    assert len(requests(bus)) == 1


@pytest.mark.parametrize(
    "path",
    [
        "a/%2e%2e/b",
        "a/%2E%2e/b",
        "%2f",
        "%5C",
        "a%c0%ae",
        "..",
        ".",
        "a/../b",
        "a\\b",
        "a;b",
        "a\x00b",
        "a\nb",
        "a\x85b",
        " a",
        "a ",
        "a\u3000",
        "a//b",
        "/a",
        "\uff0e\uff0e",
        "a/\u2025",
        "a\uff0fb",
        "a\ufe68b",
    ],
)
def test_refusal_table(path):
    assert refusal(path) is not None


@pytest.mark.parametrize("path", ["", "a", "a/b", "a/b/", "café/ü", "a?b", "a#b", "50%off", "a.b"])
def test_allowed_table(path):
    assert refusal(path) is None
