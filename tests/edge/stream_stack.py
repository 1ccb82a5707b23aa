"""Real parts for the stream tests: on the session's nats-server and sample runner
(``tests/conftest.py``), an adapter whose handler the tests can watch (started once per
session, under a prefix of its own on the shared server)."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from busgate.adapters.service import AdapterService
from busgate.brokers import NatsServer
from busgate.bus.base import Responder
from busgate.contracts.config import Config, parse
from busgate.contracts.wire import Request
from busgate.edge.app import create_app


def stream_config(nats: str, runner: str, prefix: str, **gateway: Any) -> Config:
    return parse(
        {
            "gateway": {
                "id": "st",
                "bus": nats,
                "prefix": prefix,
                "return_ids": "always",
                **gateway,
            },
            "systems": {
                "demo": {"type": "rpc", "base_url": f"{runner}/api/demo", "timeout": 5.0},
                "idle": {"type": "rpc", "base_url": f"{runner}/api/idle", "timeout": 5.0},
            },
            "channels": {
                "demo": {"system": "demo"},
                "readonly": {"system": "demo", "methods": ["GET"]},
                "idle": {"system": "idle"},
            },
        }
    )


class Watched:
    """Which requests the adapter started and finished handling."""

    def __init__(self) -> None:
        self.started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.finished: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def wrap(self, handle: Any) -> Any:
        async def watched(req: Request, responder: Responder) -> None:
            self.started[req.id].set()
            try:
                await handle(req, responder)
            finally:
                self.finished[req.id].set()

        return watched


class Stack:
    def __init__(self, nats: str, runner: str, prefix: str, watched: Watched) -> None:
        self.nats = nats
        self.runner = runner
        self.prefix = prefix
        self.watched = watched

    def config(self, **gateway: Any) -> Config:
        return stream_config(self.nats, self.runner, self.prefix, **gateway)

    async def calls(self, request_id: str) -> list[dict[str, Any]]:
        """What the runner received for ``request_id``, oldest first."""
        async with aiohttp.ClientSession() as http, http.get(f"{self.runner}/calls") as resp:
            return [c for c in await resp.json() if c["requestId"] == request_id]

    async def finished(self, request_id: str) -> None:
        async with asyncio.timeout(30):
            await self.watched.finished[request_id].wait()


@pytest.fixture(scope="session")
async def stream_stack(nats_server: NatsServer, runner_url: str) -> AsyncIterator[Stack]:
    """An adapter serving ``demo`` (not ``idle``) over the real NATS, the runner behind it."""
    watched = Watched()
    prefix = f"st{uuid.uuid4().hex[:8]}"
    service = AdapterService(stream_config(nats_server.url, runner_url, prefix), ["demo"])
    service.handle = watched.wrap(service.handle)  # type: ignore[method-assign]
    await service.start()
    try:
        yield Stack(nats_server.url, runner_url, prefix, watched)
    finally:
        await service.stop()


@pytest.fixture
async def edge_server(stream_stack: Stack) -> AsyncIterator[Any]:
    """Start an edge node (its own NATS connection) on a real port; closed after the test."""
    servers: list[TestServer] = []

    async def start(**gateway: Any) -> TestServer:
        server = TestServer(create_app(stream_stack.config(**gateway)), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()
