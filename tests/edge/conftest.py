from __future__ import annotations

from collections.abc import Callable

import pytest
from aiohttp.test_utils import TestClient, TestServer

from busgate.bus.base import Responder
from busgate.contracts.config import Config, parse
from busgate.contracts.wire import Reply, Request
from busgate.edge.app import create_app
from tests.edge.memory_bus import MemoryBus
from tests.edge.stream_stack import edge_server, stream_stack  # noqa: F401

Handler = Callable[[Request, Responder], object]


def make_config(**gateway) -> Config:
    return parse(
        {
            "gateway": {"id": "t", "return_ids": "always", **gateway},
            "systems": {
                "demo": {"type": "rpc", "base_url": "http://127.0.0.1:9", "timeout": 2.0},
                "idle": {"type": "rpc", "base_url": "http://127.0.0.1:9"},
            },
            "channels": {
                "demo": {"system": "demo"},
                "readonly": {"system": "demo", "methods": ["GET"]},
                "idle": {"system": "idle"},
            },
        }
    )


async def echo(req: Request, responder: Responder) -> None:
    await responder.reply(
        Reply(id=req.id, body=req.body, headers={"content-type": "application/json"})
    )


@pytest.fixture
async def edge():
    """Start an edge app on a memory bus; returns (client, bus) for a given config/handler."""
    clients: list[TestClient] = []

    async def start(config: Config | None = None, handler: Handler = echo):
        bus = MemoryBus()
        await bus.serve(["demo"], handler)
        client = TestClient(TestServer(create_app(config or make_config(), bus=bus)))
        await client.start_server()
        clients.append(client)
        return client, bus

    yield start
    for client in clients:
        await client.close()
