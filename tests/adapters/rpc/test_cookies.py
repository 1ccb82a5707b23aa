"""A runner's Set-Cookie headers reach the reply only for systems with ``pass_cookies``; its
Server and hop-by-hop headers never (end to end in tests/e2e/test_shaping.py)."""

from __future__ import annotations

import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from busgate.adapters.rpc.client import RpcClient
from busgate.contracts.config import Gateway, RpcSystem
from busgate.contracts.wire import Reply, Request
from busgate.edge.responses import from_reply


@pytest.fixture
async def server():
    async def saga(request: web.Request) -> web.Response:
        answer = web.json_response({})
        answer.set_cookie("a", "1")
        answer.set_cookie("b", "2")
        answer.headers["Server"] = "leaky/1.0"
        return answer

    app = web.Application()
    app.router.add_post("/api/x/{saga}", saga)
    running = TestServer(app)
    await running.start_server()
    yield running
    await running.close()


@pytest.mark.parametrize("allowed", [False, True])
async def test_set_cookie_only_when_allowed(server, allowed):
    system = RpcSystem(base_url=str(server.make_url("/api/x")), pass_cookies=allowed)
    rpc = RpcClient("x", system, Gateway())
    try:
        reply = await rpc.call(Request(id="r", path="s", body=b"{}", deadline=time.time() + 5))
    finally:
        await rpc.close()
    assert "server" not in reply.headers
    if not allowed:
        assert "set-cookie" not in reply.headers
        return
    answer = from_reply(reply)
    assert answer.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]


def test_the_edge_splits_cookies_and_encodes_them_as_ascii():
    reply = Reply(id="r", headers={"set-cookie": "a=1\nn=é"})
    assert from_reply(reply).headers.getall("Set-Cookie") == ["a=1", "n=%C3%A9"]
