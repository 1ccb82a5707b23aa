from __future__ import annotations

import socket

import aiohttp
import pytest

from busgate.brokers import free_port
from tests.stack import dev_stack

E2E_ENV = {
    "BUSGATE__GATEWAY__MAX_BODY": "65536",
    "BUSGATE__SYSTEMS__DEMO__TIMEOUT": "1.5",
    # Short read timeouts, so that slow clients are cut within the tests' patience.
    "BUSGATE__GATEWAY__HEADER_TIMEOUT": "1.0",
    "BUSGATE__GATEWAY__BODY_TIMEOUT": "1.0",
    # A system whose runner is not running at all.
    "BUSGATE__SYSTEMS__DOWN__TYPE": "rpc",
    "BUSGATE__SYSTEMS__DOWN__TIMEOUT": "2.0",
    "BUSGATE__CHANNELS__DOWN__SYSTEM": "down",
}


@pytest.fixture(scope="module", params=["nats", "kafka"])
def stack(request):
    """The dev stack (broker, runner, adapter, edge: separate processes) over each bus.

    System ``broken`` points at a socket that listens (so the adapter connects) with a header
    aiohttp refuses to send: calling its runner raises something that is neither a timeout
    nor a connection error."""
    request.applymarker(getattr(pytest.mark, request.param))
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        env = {
            **E2E_ENV,
            "BUSGATE__SYSTEMS__DOWN__BASE_URL": f"http://127.0.0.1:{free_port()}/x",
            "BUSGATE__SYSTEMS__BROKEN__TYPE": "rpc",
            "BUSGATE__SYSTEMS__BROKEN__TIMEOUT": "5.0",
            "BUSGATE__SYSTEMS__BROKEN__BASE_URL": f"http://127.0.0.1:{port}/x",
            "BUSGATE__SYSTEMS__BROKEN__HEADERS": '{ "X-Bad" = "a\\nb" }',
            "BUSGATE__CHANNELS__BROKEN__SYSTEM": "broken",
        }
        with dev_stack(request.param, env=env) as running:
            yield running


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session
