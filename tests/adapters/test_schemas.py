"""A runner's ``schema_url`` is fetched as its calls go (the system's headers, TLS and runner
credentials), and a URL elsewhere gets none of them. (The merge into ``/api/openapi.json``
on both buses: tests/control/test_openapi_contributed.py.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from busgate.adapters.rpc.client import RpcClient
from busgate.adapters.schemas import SchemaError, read
from busgate.contracts.config import Gateway, RpcSystem

DOCUMENT = {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {}}
CREDENTIAL = "Bearer runner-only-" + "q" * 20


@pytest.fixture
async def servers() -> AsyncIterator[tuple[TestServer, TestServer, list[str | None]]]:
    """A runner whose document needs the system's header, and a docs host elsewhere that
    records the Authorization it was sent."""
    seen: list[str | None] = []

    async def guarded(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != CREDENTIAL:
            return web.json_response({"error": "who are you"}, status=401)
        return web.json_response(DOCUMENT)

    async def open_docs(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response(DOCUMENT)

    runner, docs = web.Application(), web.Application()
    runner.router.add_get("/api/demo/openapi.json", guarded)
    docs.router.add_get("/openapi.json", open_docs)
    started = [TestServer(runner, host="127.0.0.1"), TestServer(docs, host="127.0.0.1")]
    for server in started:
        await server.start_server()
    yield started[0], started[1], seen
    for server in started:
        await server.close()


def system(runner: TestServer, schema_url: str) -> RpcSystem:
    return RpcSystem(
        base_url=str(runner.make_url("/api/demo")),
        headers={"Authorization": CREDENTIAL},
        schema_url=schema_url,
    )


async def test_a_schema_on_the_runner_is_fetched_with_the_systems_headers(servers):
    runner, _, _ = servers
    demo = system(runner, "/api/demo/openapi.json")
    client = RpcClient("demo", demo, Gateway())
    try:
        async with aiohttp.ClientSession() as session:
            assert json.loads(await read(demo, session, client)) == DOCUMENT
            with pytest.raises(SchemaError, match="answered 401"):
                await read(demo, session)  # without the system's client: refused
    finally:
        await client.close()


async def test_a_schema_url_elsewhere_gets_none_of_the_runners_credentials(servers):
    runner, docs, seen = servers
    demo = system(runner, str(docs.make_url("/openapi.json")))
    client = RpcClient("demo", demo, Gateway())
    try:
        async with aiohttp.ClientSession() as session:
            assert json.loads(await read(demo, session, client)) == DOCUMENT
    finally:
        await client.close()
    assert seen == [None]


async def test_a_runner_that_is_down_is_a_schema_error_not_a_crash():
    demo = RpcSystem(base_url="http://127.0.0.1:9/api/demo", schema_url="/openapi.json")
    client = RpcClient("demo", demo, Gateway())
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(SchemaError, match="cannot fetch"):
                await read(demo, session, client)
    finally:
        await client.close()
