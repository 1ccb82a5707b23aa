"""``POST /api/track``: 202 at once, the events on the bus in batches with the caller's
identity and session, on both buses; the channel's access rules apply."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import nats
import pytest
from aiohttp.test_utils import TestServer

from busgate.contracts.codec import decode
from busgate.contracts.config import Token, parse
from busgate.contracts.wire import Request
from busgate.edge.app import create_app
from busgate.edge.tokens import TokenService
from tests.control.conftest import TRANSPORTS

SECRET = "t" * 64


async def nats_events(url: str, prefix: str) -> tuple[Callable[[int], Awaitable[list[bytes]]], Any]:
    nc = await nats.connect(url)
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def got(msg: Any) -> None:
        queue.put_nowait(msg.data)

    await nc.subscribe(f"{prefix}.track.secure", cb=got)
    await nc.flush()

    async def take(n: int) -> list[bytes]:
        return [await queue.get() for _ in range(n)]

    return take, nc.close


async def kafka_events(
    url: str, prefix: str
) -> tuple[Callable[[int], Awaitable[list[bytes]]], Any]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        f"{prefix}.track",
        bootstrap_servers=url.removeprefix("kafka://"),
        auto_offset_reset="earliest",
    )

    async def take(n: int) -> list[bytes]:
        await consumer.start()
        out: list[bytes] = []
        while len(out) < n:
            batch = await consumer.getmany(timeout_ms=1000)
            out += [m.value for msgs in batch.values() for m in msgs if m.value is not None]
        return out

    return take, consumer.stop


@pytest.fixture
async def edge(bus_url: str) -> AsyncIterator[tuple[TestServer, str]]:
    prefix = f"tr{uuid.uuid4().hex[:6]}"
    config = parse(
        {
            "gateway": {"id": "tr", "bus": bus_url, "prefix": prefix},
            "systems": {"demo": {"type": "rpc", "base_url": "http://127.0.0.1:9/"}},
            "tokens": {"main": {"secret": SECRET}},
            "channels": {"secure": {"system": "demo", "auth": "main"}},
        }
    )
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    yield server, prefix
    await server.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_events_reach_the_bus_with_identity(
    transport: str, bus_url: str, edge: tuple[TestServer, str]
) -> None:
    server, prefix = edge
    opened = nats_events if transport == "nats" else kafka_events
    take, close = await opened(bus_url, prefix)
    token = TokenService("main", Token(secret=SECRET)).access("u:7", {}, "sess-9")
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession() as http:
            url = server.make_url("/api/track/secure/page/view")
            async with http.post(url, json={"n": 0}) as resp:
                assert resp.status == 401  # the channel's rules apply
            for n in range(3):
                async with http.post(url, json={"n": n}, headers=headers) as resp:
                    assert resp.status == 202
                    assert (await resp.json())["accepted"] is True
            async with http.post(
                url, data=b"{not json", headers={**headers, "content-type": "application/json"}
            ) as resp:
                assert resp.status == 400
        async with asyncio.timeout(30):
            events = [decode(d) for d in await take(3)]
    finally:
        await close()
    assert all(isinstance(e, Request) and e.kind == "track" for e in events)
    requests = [e for e in events if isinstance(e, Request)]
    assert sorted(e.body for e in requests) == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    assert {(e.identity.subject, e.identity.session_id) for e in requests if e.identity} == {
        ("u:7", "sess-9")
    }
    assert {e.channel for e in requests} == {"secure"} and requests[0].path == "page/view"
