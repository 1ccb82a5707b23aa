"""``/api/request/full``: a caller with ``gateway.full_role`` supplies identity and origin,
which the runner sees; any other caller gets 403."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from busgate.contracts.config import Token, parse
from busgate.edge.tokens import TokenService
from tests.control.conftest import edge_and_adapter

SECRET = "f" * 64
KEY = "renderer-key-" + "q" * 40


@pytest.fixture
async def edge(nats_server: Any, runner_url: str) -> AsyncIterator[TestServer]:
    digest = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
    config = parse(
        {
            "gateway": {"id": "fu", "bus": nats_server.url, "prefix": f"fu{uuid.uuid4().hex[:6]}"},
            "systems": {"demo": {"type": "rpc", "base_url": f"{runner_url}/api/demo"}},
            "tokens": {
                "main": {
                    "secret": SECRET,
                    "api_key_header": "X-Api-Key",
                    "api_keys": {"renderer": {"hash": digest, "roles": ["gateway"]}},
                }
            },
            "channels": {"secure": {"system": "demo", "auth": "main"}},
        }
    )
    async with edge_and_adapter(config) as server:
        yield server


SUPPLIED = {
    "origin": {"client_ip": "203.0.113.9", "user_agent": "browser/1"},
    "auth": {"subject": "u:42", "roles": ["user"]},
    "payload": {"x": 1},
}


@pytest.mark.nats
async def test_trusted_caller_supplies_identity(edge: TestServer) -> None:
    url = edge.make_url("/api/request/full/secure/meta")
    key = {"X-Api-Key": KEY}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=SUPPLIED, headers=key) as resp:
            assert resp.status == 200, await resp.text()
            meta = await resp.json()
        assert meta["identity"]["subject"] == "u:42"
        assert meta["identity"]["roles"] == ["user"]
        async with http.get(url, params={"data": json.dumps(SUPPLIED)}, headers=key) as resp:
            assert resp.status == 200
            assert (await resp.json())["identity"]["subject"] == "u:42"
        echo = edge.make_url("/api/request/full/secure/echo")
        async with http.post(echo, json=SUPPLIED, headers=key) as resp:
            assert await resp.json() == {"x": 1}

        user = TokenService("main", Token(secret=SECRET)).access("u:1", {"roles": ["user"]}, "s")
        async with http.post(url, json=SUPPLIED, headers={"Authorization": f"Bearer {user}"}) as r:
            assert r.status == 403
        async with http.post(url, json=SUPPLIED) as resp:
            assert resp.status == 401
        async with http.post(url, json={"auth": "nobody"}, headers=key) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "bad_request"
        async with http.get(url, headers=key) as resp:
            assert resp.status == 400
