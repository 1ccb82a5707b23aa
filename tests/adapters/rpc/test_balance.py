"""Several runners behind one system and the cap on an answer held in memory, against real
sample runners over HTTP (the process-level test with a killed runner is in
tests/e2e/test_shaping.py)."""

from __future__ import annotations

import time

import pytest
from aiohttp.test_utils import TestServer

from busgate.adapters.rpc.client import RpcClient
from busgate.brokers import free_port
from busgate.contracts import errors
from busgate.contracts.config import Gateway, RpcSystem
from busgate.contracts.wire import Request
from busgate.runners.rpc import CALLS, create_app


@pytest.fixture
async def runners():
    servers = [TestServer(create_app()) for _ in range(2)]
    for server in servers:
        await server.start_server()
    yield servers
    for server in servers:
        await server.close()


def request(path: str, body: bytes = b"{}") -> Request:
    return Request(id="gw-x-1", path=path, body=body, deadline=time.time() + 5)


async def test_round_robin_and_a_refusing_runner_is_skipped(runners):
    dead = f"http://127.0.0.1:{free_port()}/api/demo"
    urls = (*(str(s.make_url("/api/demo")) for s in runners), dead)
    rpc = RpcClient("lb", RpcSystem(base_urls=urls, eject_time=60), Gateway())
    try:
        replies = [await rpc.call(request("echo")) for _ in range(9)]
    finally:
        await rpc.close()
    assert {r.status for r in replies} == {200}  # the refused calls went to the next runner
    served = [len(s.app[CALLS]) for s in runners]
    assert sum(served) == 9 and min(served) >= 4, served
    dead_runner = rpc.balancer.runners[2]  # type: ignore[union-attr]
    assert dead_runner.failures == 1  # left out after its first refusal


async def test_an_answer_over_max_answer_is_refused(runners):
    base = str(runners[0].make_url("/api/demo"))
    rpc = RpcClient("big", RpcSystem(base_url=base, max_answer=2000), Gateway())
    try:
        assert (await rpc.call(request("blob", b'{"bytes": 1000}'))).status == 200
        with pytest.raises(errors.ReplyTooLarge):
            await rpc.call(request("blob", b'{"bytes": 5000}'))
    finally:
        await rpc.close()
