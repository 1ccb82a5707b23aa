"""The runtime-control tests run on the session's nats-server, Tansu broker and sample RPC
runner (``tests/conftest.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from busgate.adapters.service import AdapterService
from busgate.contracts.config import Config
from busgate.edge.app import create_app

TRANSPORTS = [
    pytest.param("nats", marks=pytest.mark.nats, id="nats"),
    pytest.param("kafka", marks=pytest.mark.kafka, id="kafka"),
]


@pytest.fixture
def bus_url(request: pytest.FixtureRequest) -> str:
    """The broker URL of the transport the test is parametrized with (``transport``)."""
    transport = request.getfixturevalue("transport")
    if transport == "nats":
        return str(request.getfixturevalue("nats_server").url)
    return str(request.getfixturevalue("tansu_broker").url)


@contextlib.asynccontextmanager
async def edge_and_adapter(config: Config) -> AsyncIterator[TestServer]:
    """An adapter and an edge (in this process) of ``config``: the edge's test server."""
    adapter = AdapterService(config)
    await adapter.start()
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()
        await adapter.stop()
