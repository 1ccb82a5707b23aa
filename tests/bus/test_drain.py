"""A rolling restart of an adapter loses no request, on each transport: the leaving adapter
stops taking requests, finishes the ones in hand, and the other adapter of its system takes
everything else -- on Kafka after the consumer group has moved the leaver's partitions."""

from __future__ import annotations

import asyncio
import time

import pytest

from busgate.contracts.wire import Reply
from tests.bus.conftest import SYSTEM, TRANSPORTS, close_world, eventually, make_request, open_world


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_draining_adapter_finishes_its_requests_and_loses_none(
    transport: str, request: pytest.FixtureRequest
) -> None:
    broker = request.getfixturevalue("nats_server" if transport == "nats" else "tansu_broker")
    world = await open_world(transport, broker)
    clock = time.time() - time.monotonic()
    leaving, staying = world.adapters
    calls: list[asyncio.Future[Reply]] = []
    sent: list[tuple[str, float]] = []
    """(request id, monotonic time sent) of each call, for the report of a lost one."""
    flowing = True

    async def steady_flow() -> None:
        """One request every 10 ms, before, during and after the drain."""
        while flowing:
            req = make_request("sleep", query={"seconds": "0.05"}, timeout=30)
            sent.append((req.id, time.monotonic()))
            calls.append(asyncio.ensure_future(world.edge.request(req)))
            await asyncio.sleep(0.01)

    async def more_calls(count: int) -> None:
        sent = len(calls)
        await eventually(lambda: len(calls) >= sent + count, within=10)

    try:
        sender = asyncio.ensure_future(steady_flow())
        await eventually(lambda: len(leaving._inflight) >= 2, within=20)
        in_hand = set(leaving._inflight)
        drain_began = time.monotonic()
        await leaving.drain(grace=10)
        drain_ended = time.monotonic()
        assert not leaving._inflight
        handled_by_leaver = {i for i, n in world.seen.handled.items() if n == leaving.node}
        drained_at = len(calls)
        await leaving.close()
        if transport == "kafka":
            # On through the group's rebalance, until the edge sees the other adapter hold
            # every partition of the request topic (the two held one each before).
            presence = world.edge.presence
            await eventually(
                lambda: (
                    presence.nodes(SYSTEM) == [staying.node]
                    and len(presence.partitions(SYSTEM)) == 2
                ),
                within=30,
            )
        await more_calls(20)
        flowing = False
        await sender
        # A lost request raises DeadlineExceeded: wait for all, then say what became of each.
        await asyncio.wait(calls)
        lost = [
            (sent[i], world.seen.handled.get(sent[i][0], "no adapter"))
            for i, call in enumerate(calls)
            if call.exception() is not None
        ]
        dropped = sum(bus.dropped_expired for bus in world.adapters)
        stepped = time.time() - time.monotonic() - clock
        # A request is dropped unanswered only past its deadline (30 s away): that happens
        # when the machine's wall clock steps forward, not because of the drain.
        assert not lost or (abs(stepped) > 1 and len(lost) <= dropped), (
            f"{len(lost)} of {len(calls)} requests got no reply; drain ran from "
            f"{drain_began:.3f} to {drain_ended:.3f} (monotonic); lost (id, sent at) -> "
            f"handled by: {lost}; requests dropped as expired by the adapters: {dropped}; "
            f"wall clock minus monotonic moved by {stepped:+.3f} s during the test"
        )
        replies = [call.result() for call in calls if call.exception() is None]
    finally:
        flowing = False
        await close_world(world)
    assert [r.body for r in replies] == [b"late"] * (len(calls) - len(lost))
    assert in_hand <= handled_by_leaver
    # Nothing reached the leaver once its drain had returned: the rest went to the other.
    assert {i for i, n in world.seen.handled.items() if n == leaving.node} == handled_by_leaver
    after = [c.result().id for c in calls[drained_at:] if c.exception() is None]
    assert after and all(world.seen.handled[i] == staying.node for i in after)
