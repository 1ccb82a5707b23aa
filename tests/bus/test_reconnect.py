"""A broker restart, on each transport: calls fail fast (503) while it is down, and the same
Bus objects serve again once it is back, without being recreated.

Each transport gets its own broker here (not the shared one): it is stopped and started on the
same port. Tansu keeps its data in memory, so after its restart topics and consumer groups are
gone and the Kafka transport has to recreate and rejoin them by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from busgate.brokers import Broker, NatsServer, TansuBroker
from busgate.contracts.errors import BusgateError, BusUnavailable, NoResponders
from busgate.contracts.wire import StreamStep
from tests.bus.conftest import TRANSPORTS, World, close_world, make_request, open_world


@pytest.fixture(params=TRANSPORTS)
def own_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    broker: Broker = NatsServer() if request.param == "nats" else TansuBroker()
    with broker:
        yield broker


def transport_of(broker: Broker) -> str:
    return "nats" if isinstance(broker, NatsServer) else "kafka"


async def served(world: World, within: float) -> float:
    """Retry a request until one is answered (bounded); return how long that took."""
    started = time.monotonic()
    last: BusgateError | None = None
    while time.monotonic() - started < within:
        try:
            reply = await world.edge.request(make_request("echo", body=b"again", timeout=2))
        except (BusUnavailable, NoResponders) as exc:
            last = exc  # failed fast: try again shortly
            await asyncio.sleep(0.1)
        except BusgateError as exc:
            last = exc  # waited out its deadline: try again at once
        else:
            assert reply.body == b"again"
            return time.monotonic() - started
    raise AssertionError(f"no request served within {within:g} s after the restart; last: {last!r}")


async def test_broker_restart(own_broker: Broker) -> None:
    world = await open_world(transport_of(own_broker), own_broker, adapters=1)
    try:
        reply = await world.edge.request(make_request("echo", body=b"before"))
        assert reply.body == b"before"

        own_broker.stop()
        started = time.monotonic()
        try:
            await world.edge.request(make_request("echo", timeout=10))
        except (BusUnavailable, NoResponders) as exc:
            assert exc.status == 503
            failed = exc
        else:
            raise AssertionError("a request was answered while the broker was down")
        elapsed = time.monotonic() - started
        print(f"\n{world.transport}: {type(failed).__name__} {elapsed:.2f} s into the outage")
        assert elapsed < 3.0

        own_broker.start()
        recovery = await served(world, within=60)
        print(f"\n{world.transport}: served again {recovery:.1f} s after the broker restarted")

        # Everything works again on the same objects: replies, streams, commands, cancel.
        req = make_request("stream", kind="stream", query={"count": "4"})
        steps: list[StreamStep] = [s async for s in world.edge.stream(req, idle_timeout=5)]
        assert [s.seq for s in steps] == [1, 2, 3, 4]
        await world.edge.publish_command("after-restart", b"{}")

        # A stream its caller leaves is cancelled at the adapter: the Cancel crosses the
        # restarted broker (control subject / recreated control topic) and stops the saga.
        req = make_request("forever", kind="stream", timeout=30)
        forever = world.edge.stream(req, idle_timeout=5)
        assert [(await anext(forever)).seq for _ in range(2)] == [1, 2]
        responder = world.seen.responders[req.id]
        assert not responder.cancelled.is_set()
        await forever.aclose()  # the client went away: the edge broadcasts a Cancel
        await asyncio.wait_for(responder.cancelled.wait(), 10)
        adapter = world.adapters[0]
        await asyncio.wait_for(adapter._idle.wait(), 5)  # the saga loop ended
        assert req.id not in adapter._inflight
        for _ in range(10):
            reply = await world.edge.request(make_request("echo", body=b"after"))
            assert reply.body == b"after"
    finally:
        await close_world(world)
