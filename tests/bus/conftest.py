"""Real brokers and buses for the transport contract tests.

On the session's NATS server and Tansu broker (``tests/conftest.py``), per transport one edge
bus and two adapter buses serving the same system (one queue / consumer group): a Kafka group
join takes seconds, so the adapters join once and every contract test shares them. ``world`` is
parametrized over the transports, so each contract test runs on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from busgate.brokers import Broker
from busgate.bus import Bus, Responder, from_url
from busgate.bus.base import Handler
from busgate.contracts.errors import UpstreamError
from busgate.contracts.wire import Kind, Reply, Request

SYSTEM = "svc"

TRANSPORTS = [
    pytest.param("nats", marks=pytest.mark.nats, id="nats"),
    pytest.param("kafka", marks=pytest.mark.kafka, id="kafka"),
]


async def eventually(check: Callable[[], bool], *, within: float = 10.0) -> None:
    """Poll ``check()`` until it holds; fail after ``within`` seconds."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {within:g} s")


def make_request(
    path: str,
    *,
    system: str = SYSTEM,
    timeout: float = 5.0,
    kind: Kind = "request",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> Request:
    return Request(
        id=uuid.uuid4().hex,
        kind=kind,
        system=system,
        path=path,
        body=body,
        headers=headers or {},
        query=query or {},
        deadline=time.time() + timeout,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )


@dataclass
class Adapters:
    """What the test adapters saw: which node handled which request, and their responders."""

    handled: dict[str, str] = field(default_factory=dict)
    responders: dict[str, Responder] = field(default_factory=dict)
    finished: dict[str, asyncio.Event] = field(default_factory=dict)
    """Set when the handler of a request id returned (``big`` and ``bigstep``)."""
    steps_after_big: dict[str, int] = field(default_factory=dict)

    def finished_event(self, request_id: str) -> asyncio.Event:
        return self.finished.setdefault(request_id, asyncio.Event())

    def handler_for(self, node: str) -> Handler:
        async def handle(req: Request, responder: Responder) -> None:
            self.handled[req.id] = node
            self.responders[req.id] = responder
            if req.path == "echo":
                await responder.reply(
                    Reply(
                        id=req.id,
                        status=201,
                        headers={**req.headers, "x-adapter": node},
                        body=req.body,
                    )
                )
            elif req.path == "sleep":
                await asyncio.sleep(float(req.query["seconds"]))
                await responder.reply(Reply(id=req.id, body=b"late"))
            elif req.path == "stream":
                count = int(req.query["count"])
                for i in range(count):
                    await responder.step(
                        [json.dumps({"i": i}).encode()], next=str(i), last=i == count - 1
                    )
            elif req.path == "forever":
                i = 0
                while not responder.cancelled.is_set():
                    await responder.step([json.dumps({"i": i}).encode()], next=str(i))
                    i += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(responder.cancelled.wait(), 0.05)
            elif req.path == "big":  # an answer of `bytes` bytes
                body = b"x" * int(req.query["bytes"])
                await responder.reply(Reply(id=req.id, body=body))
                self.finished_event(req.id).set()
            elif req.path == "bigstep":  # a small step, a step of `bytes` bytes, then more
                await responder.step([b"1"], next="1")
                await responder.step([b'"' + b"x" * int(req.query["bytes"]) + b'"'], next="2")
                sent = 0
                while not responder.cancelled.is_set() and sent < 3:
                    await responder.step([b"3"], next="3")
                    sent += 1
                self.steps_after_big[req.id] = sent
                self.finished_event(req.id).set()
            elif req.path == "error":
                await responder.step([b'{"ok":true}'])
                await responder.step([], error=UpstreamError("the runner fell over"))

        return handle


@dataclass
class World:
    transport: str
    broker: Broker
    edge: Bus
    adapters: list[Bus]
    seen: Adapters
    prefix: str


async def open_world(transport: str, broker: Broker, *, adapters: int = 2) -> World:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    edge = from_url(broker.url, node=f"edge-{prefix}", prefix=prefix)
    nodes = [
        from_url(broker.url, node=f"adapter{i}-{prefix}", prefix=prefix) for i in range(adapters)
    ]
    seen = Adapters()
    await asyncio.gather(edge.connect(), *(bus.connect() for bus in nodes))
    await asyncio.gather(*(bus.serve([SYSTEM], seen.handler_for(bus.node)) for bus in nodes))
    for bus in nodes:
        bus._spawn(bus.announce_forever(interval=1.0, ttl=4.0))
    # Once the edge sees the adapters, a call is answered: no retry here. The "no responders"
    # a nats-server may give right after a subscription is retried by the bus itself while
    # the presence view shows a live adapter (``Bus.request``), as it is for real clients.
    await eventually(lambda: len(edge.presence.nodes(SYSTEM)) == adapters, within=30)
    await edge.request(make_request("echo", timeout=2))
    return World(transport, broker, edge, nodes, seen, prefix)


async def close_world(world: World) -> None:
    await asyncio.gather(*(bus.close() for bus in [world.edge, *world.adapters]))


@pytest_asyncio.fixture(scope="session", params=TRANSPORTS)
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    broker: Broker = request.getfixturevalue(
        "nats_server" if request.param == "nats" else "tansu_broker"
    )
    opened = await open_world(request.param, broker)
    try:
        yield opened
    finally:
        await close_world(opened)
