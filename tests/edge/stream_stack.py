"""Real parts for the stream tests: a nats-server, the sample runner as its own process and an
adapter on the bus whose handler the tests can watch (started once per session)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from busgate.adapters.service import AdapterService
from busgate.brokers import NatsServer, free_port, wait_for_port
from busgate.bus.base import Responder
from busgate.contracts.config import Config, parse
from busgate.contracts.wire import Request
from busgate.edge.app import create_app


def stream_config(nats: str, runner: str, **gateway: Any) -> Config:
    return parse(
        {
            "gateway": {"id": "st", "bus": nats, "return_ids": "always", **gateway},
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
    def __init__(self, nats: str, runner: str, watched: Watched) -> None:
        self.nats = nats
        self.runner = runner
        self.watched = watched

    def config(self, **gateway: Any) -> Config:
        return stream_config(self.nats, self.runner, **gateway)

    async def calls(self, request_id: str) -> list[dict[str, Any]]:
        """What the runner received for ``request_id``, oldest first."""
        async with aiohttp.ClientSession() as http, http.get(f"{self.runner}/calls") as resp:
            return [c for c in await resp.json() if c["requestId"] == request_id]

    async def finished(self, request_id: str) -> None:
        async with asyncio.timeout(30):
            await self.watched.finished[request_id].wait()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="session")
def runner_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "busgate", "runner", "rpc", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, 30, proc)  # type: ignore[arg-type]
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
async def stream_stack(nats_server: NatsServer, runner_url: str) -> AsyncIterator[Stack]:
    """An adapter serving ``demo`` (not ``idle``) over the real NATS, the runner behind it."""
    watched = Watched()
    service = AdapterService(stream_config(nats_server.url, runner_url), ["demo"])
    service.handle = watched.wrap(service.handle)  # type: ignore[method-assign]
    await service.start()
    try:
        yield Stack(nats_server.url, runner_url, watched)
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
