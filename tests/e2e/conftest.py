from __future__ import annotations

import aiohttp
import pytest

from busgate.brokers import free_port
from tests.stack import dev_stack

E2E_ENV = {
    "BUSGATE__GATEWAY__MAX_BODY": "65536",
    "BUSGATE__SYSTEMS__DEMO__TIMEOUT": "1.5",
    # A system whose runner is not running at all.
    "BUSGATE__SYSTEMS__DOWN__TYPE": "rpc",
    "BUSGATE__SYSTEMS__DOWN__TIMEOUT": "2.0",
    "BUSGATE__CHANNELS__DOWN__SYSTEM": "down",
}


@pytest.fixture(scope="module", params=["nats", "kafka"])
def stack(request):
    """The dev stack (broker, runner, adapter, edge: separate processes) over each bus."""
    request.applymarker(getattr(pytest.mark, request.param))
    env = {**E2E_ENV, "BUSGATE__SYSTEMS__DOWN__BASE_URL": f"http://127.0.0.1:{free_port()}/x"}
    with dev_stack(request.param, env=env) as running:
        yield running


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session
