"""``/api/control``: the admin role and the address allow-list both, no secret in any answer,
the refresh fan-out over the control subject, and switched-off controllers (404)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer

from busgate.adapters.service import AdapterService
from busgate.contracts.config import Config, Controllers, Token, loads
from busgate.edge.app import create_app
from busgate.edge.control import redact
from busgate.edge.tokens import TokenService

SECRET = "s3cr3t-" + "k" * 60
API_KEY = "control-test-api-key-" + "z" * 40
HEADER_SECRET = "Bearer runner-credential-xyz"


def config(bus: str, prefix: str, **gateway: Any) -> Config:
    key_hash = "sha256:" + hashlib.sha256(API_KEY.encode()).hexdigest()
    parsed = loads(
        f"""
[gateway]
id = "ct"
bus = "{bus}"
prefix = "{prefix}"
refresh = -1
[systems.demo]
type = "rpc"
base_url = "http://user:pa55word@127.0.0.1:9/api/demo"
headers = {{ authorization = "{HEADER_SECRET}" }}

[tokens.main]
secret = "{SECRET}"
api_key_header = "X-Api-Key"
[tokens.main.api_keys.ops]
hash = "{key_hash}"
roles = ["admin"]

[channels.demo]
system = "demo"
auth = "main"
""",
        env={},
    )
    if "controllers" in gateway:
        gateway["controllers"] = Controllers(**gateway["controllers"])
    if "control_allow" in gateway:
        gateway["control_allow"] = tuple(gateway["control_allow"])
    return msgspec.structs.replace(
        parsed, gateway=msgspec.structs.replace(parsed.gateway, **gateway)
    )


def token(*roles: str) -> dict[str, str]:
    minted = TokenService("main", Token(secret=SECRET)).access("u:1", {"roles": list(roles)}, "s")
    return {"Authorization": f"Bearer {minted}"}


@pytest.fixture
async def edge(nats_server: Any) -> AsyncIterator[Any]:
    servers: list[TestServer] = []

    async def start(**gateway: Any) -> TestServer:
        prefix = gateway.pop("prefix", f"ct{uuid.uuid4().hex[:6]}")
        server = TestServer(
            create_app(config(nats_server.url, prefix, **gateway)), host="127.0.0.1"
        )
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.mark.nats
async def test_role_and_address_both_needed(edge: Any) -> None:
    server = await edge()
    url = server.make_url("/api/control/systems/*")
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"
        async with http.get(url, headers=token("user")) as resp:
            assert resp.status == 403
            assert "requestId" in (await resp.json())["error"]
        async with http.get(url, headers=token("admin")) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(url, headers={"X-Api-Key": API_KEY}) as resp:
            assert resp.status == 200
        async with http.get(server.make_url("/api/control/nope/*"), headers=token("admin")) as r:
            assert r.status == 404
        async with http.get(server.make_url("/api/control/systems/x"), headers=token("admin")) as r:
            assert r.status == 404
    # An admin from outside control_allow: refused, whatever it forwards.
    outside = await edge(control_allow=["10.9.9.0/24"])
    async with aiohttp.ClientSession() as http:
        headers = {**token("admin"), "X-Forwarded-For": "10.9.9.1"}
        async with http.get(outside.make_url("/api/control/systems/*"), headers=headers) as r:
            assert r.status == 403
            assert "address" in (await r.json())["error"]["message"]


@pytest.mark.nats
async def test_no_secret_in_any_answer(edge: Any) -> None:
    server = await edge()
    async with aiohttp.ClientSession() as http:
        for component in ("systems", "channels", "services", "tokens"):
            url = server.make_url(f"/api/control/{component}/*")
            async with http.get(url, headers=token("admin")) as resp:
                assert resp.status == 200
                text = await resp.text()
            for secret in (SECRET, "pa55word", HEADER_SECRET, API_KEY, "sha256:"):
                assert secret not in text, (component, text)
        async with http.get(
            server.make_url("/api/control/tokens/main"), headers=token("admin")
        ) as r:
            body = await r.json()
    main = body["tokens"]["main"]
    assert main["secret"] == "<redacted>"
    assert main["api_keys"]["ops"]["hash"] == "<redacted>"
    assert main["api_key_header"] == "X-Api-Key"  # a header name is no secret


def test_redact_shapes() -> None:
    assert redact({"producer": {"sasl_plain_password": "p", "acks": "all"}}) == {
        "producer": {"sasl_plain_password": "<redacted>", "acks": "all"}
    }
    assert redact({"url": "kafka://u:p@h:9092"}) == {"url": "kafka://<redacted>@h:9092"}
    store = {"url": "s3://b/p", "options": {"key": "AKIA", "token": "t", "endpoint_url": "u"}}
    assert redact(store) == {
        "url": "s3://b/p",
        "options": {"key": "<redacted>", "token": "<redacted>", "endpoint_url": "<redacted>"},
    }


@pytest.mark.nats
async def test_refresh_fans_out_to_every_node(edge: Any, nats_server: Any) -> None:
    prefix = f"ct{uuid.uuid4().hex[:6]}"
    first = await edge(prefix=prefix)
    await edge(prefix=prefix)
    adapter = AdapterService(config(nats_server.url, prefix))
    await adapter.start()
    try:
        async with aiohttp.ClientSession() as http:
            url = first.make_url("/api/control")
            async with http.post(url, headers=token("admin")) as resp:
                assert resp.status == 200
                body = await resp.json()
            async with http.post(url, headers=token("user")) as resp:
                assert resp.status == 403
    finally:
        await adapter.stop()
    roles = sorted(n["role"] for n in body["nodes"])
    assert roles == ["adapter", "edge", "edge"]
    assert all(n["applied"] is False and "refresh = -1" in n["error"] for n in body["nodes"])


@pytest.mark.nats
async def test_switched_off_controllers_answer_404(edge: Any) -> None:
    server = await edge(controllers={"control": False, "request": False})
    async with aiohttp.ClientSession() as http:
        async with http.get(server.make_url("/api/control/systems/*"), headers=token("admin")) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "not_found"
        async with http.post(
            server.make_url("/api/request/demo/echo"), headers=token("admin")
        ) as r:
            assert r.status == 404
        async with http.get(server.make_url("/api/stream/demo/count"), headers=token("a")) as r:
            assert r.status != 404  # still on: refused or served, but routed


@pytest.mark.nats
async def test_the_bus_asyncapi_document_is_served_to_operator_addresses_only(edge: Any) -> None:
    """It lays out the bus behind the gateway: served where the control API is
    (``control_allow``), 403 elsewhere, whatever the caller forwards."""
    inside = await edge()
    outside = await edge(control_allow=["10.9.9.0/24"])
    async with aiohttp.ClientSession() as http:
        async with http.get(inside.make_url("/api/asyncapi.json")) as resp:
            assert resp.status == 200
            assert (await resp.json())["asyncapi"] == "3.0.0"
        headers = {"X-Forwarded-For": "10.9.9.9", "Forwarded": "for=10.9.9.9"}
        async with http.get(outside.make_url("/api/asyncapi.json"), headers=headers) as resp:
            assert resp.status == 403
            error = (await resp.json())["error"]
            assert error["code"] == "forbidden" and "AsyncAPI" in error["message"]
