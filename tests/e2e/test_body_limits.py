"""Bodies and answers against what the bus carries, end to end (``busgate dev``: broker,
runner, adapter and edge as separate processes) over NATS and Kafka, both at their default
1 MiB per message, with ``gateway.max_body`` at its default 10 MiB."""

from __future__ import annotations

import json

import pytest

from busgate.brokers import free_port
from busgate.bus import limits
from tests.sse_client import collect
from tests.stack import dev_stack

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
LIMIT = limits.body_limit(10 * MIB, limits.carried(MIB))
"""The effective body limit: the bus's 1 MiB less the room for headers and envelope."""


@pytest.fixture(scope="module", params=["nats", "kafka"])
def stack(request):
    request.applymarker(getattr(pytest.mark, request.param))
    env = {
        "BUSGATE__SYSTEMS__DEMO__TIMEOUT": "5.0",
        "BUSGATE__SYSTEMS__DOWN__TYPE": "rpc",
        "BUSGATE__SYSTEMS__DOWN__BASE_URL": f"http://127.0.0.1:{free_port()}/x",
    }
    with dev_stack(request.param, env=env) as running:
        yield running


async def error_of(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    error = (await resp.json())["error"]
    assert error["requestId"] == resp.headers["X-Request-Id"]
    return error


def body_of(size: int) -> bytes:
    return b'{"x":"' + b"a" * (size - 8) + b'"}'


async def test_a_body_over_what_the_bus_carries_is_413_naming_the_limit(stack, http):
    headers = {"Content-Type": "application/json"}
    url = f"{stack.url}/api/request/demo/echo"
    async with http.post(url, data=body_of(2 * MIB), headers=headers) as resp:
        error = await error_of(resp, 413)
    assert error["code"] == "payload_too_large"
    assert f"limit of {LIMIT} bytes" in error["message"]

    async def chunked():  # no Content-Length: refused once read
        yield body_of(LIMIT + 1)

    async with http.post(url, data=chunked(), headers=headers) as resp:
        assert f"limit of {LIMIT} bytes" in (await error_of(resp, 413))["message"]


async def test_a_body_just_under_the_limit_crosses_the_bus_both_ways(stack, http):
    body = body_of(LIMIT)
    headers = {"Content-Type": "application/json"}
    async with http.post(f"{stack.url}/api/request/demo/echo", data=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        assert await r.read() == body


async def test_an_answer_over_what_the_bus_carries_is_502_reply_too_large(stack, http):
    url = f"{stack.url}/api/request/demo/blob"
    async with http.post(url, json={"bytes": 2 * MIB}) as resp:
        assert (await error_of(resp, 502))["code"] == "reply_too_large"
    async with http.post(url, json={"bytes": 10}) as resp:  # the adapter still serves
        assert await resp.json() == {"blob": "x" * 10}


async def test_a_stream_step_over_what_the_bus_carries_ends_the_stream_with_an_error(stack, http):
    async with http.get(f"{stack.url}/api/stream/demo/count?to=5&wait=0&big_at=2") as resp:
        assert resp.status == 200
        got = await collect(resp)
        request_id = resp.headers["X-Request-Id"]
    assert [e.kind for e in got] == ["message", "error"]
    assert got[0].data == "1"
    error = json.loads(got[1].data)["error"]
    assert (error["code"], error["requestId"]) == ("reply_too_large", request_id)
    async with http.get(f"{stack.runner}/calls") as resp:
        made = [c for c in await resp.json() if c["requestId"] == request_id]
    assert len(made) == 2  # no runner call after the step that could not be sent
