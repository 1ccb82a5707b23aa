"""Messages larger than the bus carries, on both real brokers: a request is refused before it
is sent (413, the connection intact), an answer becomes a small ``reply_too_large`` error
(502) and a stream step ends the stream with that error; no handler crashes or hangs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from busgate.bus import from_url, limits, max_message_of
from busgate.contracts.errors import MessageTooLarge, Remote
from tests.bus.conftest import World, make_request

MIB = 1024 * 1024
OVER = int(1.2 * MIB)
"""Over what both buses carry by default (1 MiB), under ``gateway.max_body``'s 10 MiB."""


def test_the_body_limit_is_the_smaller_of_max_body_and_what_the_bus_carries():
    carried = limits.carried(MIB)
    assert carried == MIB - limits.HEADER_ROOM
    assert limits.body_limit(10 * MIB, carried) == carried - limits.ENVELOPE_ROOM
    assert limits.body_limit(1000, carried) == 1000
    assert limits.body_limit(10 * MIB, 0) == 10 * MIB  # no known limit (the memory bus)


@pytest.mark.parametrize(
    ("url", "carried"),
    [
        ("nats://a:4222", MIB),
        ("nats://a:4222,nats://b:4222?max_payload=8388608", 8 * MIB),
        ("kafka://a:9092", MIB),
        ("kafka://a:9092?partitions=4&max_request_size=4194304", 4 * MIB),
    ],
)
def test_what_a_bus_carries_is_known_from_its_url_without_connecting(url, carried):
    assert max_message_of(url) == limits.carried(carried)
    assert from_url(url, node="n").max_message == limits.carried(carried)


async def test_a_connected_nats_bus_takes_the_servers_max_payload(nats_server):
    bus = from_url(f"{nats_server.url}?max_payload={8 * MIB}", node="limits-probe")
    assert bus.max_message == limits.carried(8 * MIB)  # the URL's, before connecting
    await bus.connect()
    try:
        assert bus.max_message == limits.carried(MIB)  # the server's default is lower
    finally:
        await bus.close()


async def test_a_request_larger_than_the_bus_carries_is_413_and_the_connection_survives(
    world: World,
):
    req = make_request("echo", body=b"x" * OVER)
    with pytest.raises(MessageTooLarge) as refused:
        await world.edge.request(req)
    assert refused.value.status == 413
    assert req.id not in world.seen.handled
    assert world.edge.connected
    small = make_request("echo", body=b"fine")
    assert (await world.edge.request(small)).body == b"fine"


def no_handler_failed(caplog: pytest.LogCaptureFixture) -> None:
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failed, [r.getMessage() for r in failed]


async def test_an_answer_larger_than_the_bus_carries_is_502_reply_too_large(
    world: World, caplog: pytest.LogCaptureFixture
):
    req = make_request("big", query={"bytes": str(OVER)})
    reply = await world.edge.request(req)
    assert reply.error is not None
    assert (reply.status, reply.error.code, reply.error.status) == (502, "reply_too_large", 502)
    assert "larger than the bus carries" in reply.error.message
    await asyncio.wait_for(world.seen.finished_event(req.id).wait(), 5)
    no_handler_failed(caplog)
    assert (await world.edge.request(make_request("echo", body=b"next"))).body == b"next"


async def test_a_stream_step_too_large_ends_the_stream_with_an_error(
    world: World, caplog: pytest.LogCaptureFixture
):
    req = make_request("bigstep", kind="stream", query={"bytes": str(OVER)})
    got = []
    with pytest.raises(Remote) as failed:
        async for step in world.edge.stream(req, idle_timeout=5):
            got.append(step.items)
    assert got == [[b"1"]]
    assert (failed.value.status, failed.value.code) == (502, "reply_too_large")
    await asyncio.wait_for(world.seen.finished_event(req.id).wait(), 5)
    assert world.seen.steps_after_big[req.id] == 0  # the handler saw the stream end
    no_handler_failed(caplog)


async def test_a_command_larger_than_the_bus_carries_is_refused_before_sending(world: World):
    with pytest.raises(MessageTooLarge):
        await world.edge.publish_command("big", b"x" * OVER)
    assert world.edge.connected
