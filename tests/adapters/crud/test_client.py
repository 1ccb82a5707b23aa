"""The CRUD adapter client against the shipped CRUD runner on PostgreSQL (a real server,
``tests.postgres``) and SQLite: what the adapter sends and what comes back."""

from __future__ import annotations

import time
import uuid

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from busgate.adapters.crud.client import CrudClient
from busgate.bus.flow import Credits
from busgate.contracts import errors
from busgate.contracts.codec import json_decode
from busgate.contracts.config import CrudSystem, Gateway
from busgate.contracts.wire import Request
from busgate.runners.crud import create_app
from tests.postgres import shared_postgres


class Steps:
    def __init__(self) -> None:
        import asyncio

        self.cancelled = asyncio.Event()
        self.steps: list[dict] = []
        self.credits = Credits(0)

    def may_step(self) -> bool:
        return True

    async def credit(self) -> bool:
        return not self.cancelled.is_set()

    async def step(self, items, *, next=None, last=False, error=None) -> None:
        self.steps.append({"items": items, "next": next, "last": last, "error": error})


@pytest.fixture(params=["sqlite", "postgres"])
async def client(request, tmp_path):
    db = f"sqlite:///{tmp_path}/d.db" if request.param == "sqlite" else shared_postgres().url
    server = TestServer(create_app(db))
    await server.start_server()
    crud = CrudClient("data", CrudSystem(base_url=str(server.make_url("/api/data"))), Gateway())
    yield crud
    await crud.close()
    await server.close()


def req(method: str, path: str, body: bytes = b"", **fields) -> Request:
    return Request(
        id=uuid.uuid4().hex,
        channel="data",
        system="data",
        method=method,
        path=path,
        body=body,
        deadline=time.time() + 5,
        **fields,
    )


async def test_methods_bodies_and_versions_go_through(client):
    state = f"s{uuid.uuid4().hex[:8]}"
    created = await client.call(req("POST", state, b'{"name": "lamp"}'))
    assert created.status == 201 and created.headers["etag"] == '"1"'
    doc = json_decode(created.body)
    assert doc["name"] == "lamp"  # the body as is: no "parameters" wrapper
    path = f"{state}/{doc['id']}"
    stale = {"if-match": '"1"'}
    assert (await client.call(req("PUT", path, b'{"n": 1}', headers=stale))).status == 200
    refused = await client.call(req("PUT", path, b'{"n": 2}', headers=stale))
    assert refused.status == 412
    got = await client.call(req("GET", path, b'{"ignored": "the query travels as query"}'))
    assert json_decode(got.body) == {"n": 1, "id": doc["id"]} and got.headers["etag"] == '"2"'
    listed = await client.call(req("GET", state, query={"n": "1"}))
    assert [d["id"] for d in json_decode(listed.body)["items"]] == [doc["id"]]
    assert (await client.call(req("DELETE", path))).status == 204
    assert (await client.call(req("GET", path))).status == 404


async def test_a_stream_pages_through_a_list(client):
    state = f"s{uuid.uuid4().hex[:8]}"
    for i in range(5):
        await client.call(req("POST", state, b'{"id": "i%d"}' % i))
    steps = Steps()
    await client.stream(req("GET", state, kind="stream", query={"limit": "2"}), steps)
    assert [len(s["items"]) for s in steps.steps] == [2, 2, 1]
    assert [s["next"] for s in steps.steps] == ["2", "4", "5"]
    assert steps.steps[-1]["last"]


async def test_a_stream_that_is_not_a_list_is_refused(client):
    steps = Steps()
    await client.stream(req("POST", "things", b"{}", kind="stream"), steps)
    assert isinstance(steps.steps[-1]["error"], errors.MethodNotAllowed)


async def test_a_runners_5xx_is_a_502_and_a_path_with_dot_segments_is_refused():
    async def boom(request: web.Request) -> web.Response:
        return web.json_response({"trace": "secret"}, status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", boom)
    server = TestServer(app)
    await server.start_server()
    crud = CrudClient("data", CrudSystem(base_url=str(server.make_url("/api/data"))), Gateway())
    try:
        with pytest.raises(errors.UpstreamError):
            await crud.call(req("GET", "things/1"))
        with pytest.raises(errors.BadRequest):
            await crud.call(req("GET", "things/../admin"))
    finally:
        await crud.close()
        await server.close()
