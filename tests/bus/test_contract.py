"""The bus contract, one suite run against each transport on a real broker (see conftest).

Whatever the transport, an edge and its adapters must behave alike: replies correlate,
deadlines hold, absent adapters fail fast, streams arrive in order and can be cancelled, the
group shares the load, commands are acknowledged durably, expired requests are not started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from nats.aio.msg import Msg

from busgate.bus import headers as hdr
from busgate.contracts.errors import DeadlineExceeded, NoResponders, Remote
from busgate.contracts.wire import StreamStep
from tests.bus.conftest import SYSTEM, World, eventually, make_request

HeadersOf = Callable[[str], Awaitable[dict[str, str]]]


def kafka_bootstrap(world: World) -> str:
    return f"{world.broker.host}:{world.broker.port}"


async def kafka_partitions(world: World, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap(world))
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]


@contextlib.asynccontextmanager
async def kafka_reader(
    world: World, topic: str, *, from_start: bool
) -> AsyncIterator[AIOKafkaConsumer]:
    """A plain consumer of all partitions of ``topic``, outside any group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap(world), enable_auto_commit=False, fetch_max_wait_ms=10
    )
    await consumer.start()
    try:
        partitions = await kafka_partitions(world, topic)
        consumer.assign(partitions)
        if from_start:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        yield consumer
    finally:
        await consumer.stop()


async def kafka_find(consumer: AIOKafkaConsumer, match: Callable[[object], bool]) -> object:
    async with asyncio.timeout(10):
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    if match(record):
                        return record


@contextlib.asynccontextmanager
async def tap_requests(world: World) -> AsyncIterator[HeadersOf]:
    """Watch the request subject/topic of SYSTEM; look up a request's bus headers by id."""
    subject = world.edge.names.request(SYSTEM)
    if world.transport == "nats":
        seen: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            seen.put_nowait(msg)

        sub = await world.edge.nc.subscribe(subject, cb=on_msg)  # type: ignore[attr-defined]

        async def nats_headers_of(request_id: str) -> dict[str, str]:
            async with asyncio.timeout(10):
                while True:
                    msg = await seen.get()
                    if msg.headers and msg.headers.get(hdr.REQUEST_ID) == request_id:
                        return dict(msg.headers)

        try:
            yield nats_headers_of
        finally:
            await sub.unsubscribe()
    else:
        async with kafka_reader(world, subject, from_start=False) as consumer:

            async def kafka_headers_of(request_id: str) -> dict[str, str]:
                def match(record: object) -> bool:
                    return (hdr.REQUEST_ID, request_id.encode()) in record.headers  # type: ignore[attr-defined]

                record = await kafka_find(consumer, match)
                return {k: v.decode() for k, v in record.headers}  # type: ignore[attr-defined]

            yield kafka_headers_of


async def test_request_reply_round_trip(world: World) -> None:
    req = make_request("echo", body=b'{"hello":"world"}')
    reply = await world.edge.request(req)
    assert reply.id == req.id
    assert reply.status == 201
    assert reply.body == b'{"hello":"world"}'
    assert world.seen.handled[req.id] == reply.headers["x-adapter"]
    assert world.edge.pending.counters.undecodable == 0


async def test_headers_cross_the_bus(world: World) -> None:
    req = make_request("echo", headers={"x-tenant": "acme", "accept": "application/json"})
    async with tap_requests(world) as headers_of:
        reply = await world.edge.request(req)
        on_the_wire = await headers_of(req.id)
    # The request's own headers reach the adapter (it echoes them back in the reply).
    assert reply.headers["x-tenant"] == "acme"
    assert reply.headers["accept"] == "application/json"
    # The bus message repeats request id, kind and traceparent for operators.
    assert on_the_wire[hdr.REQUEST_ID] == req.id
    assert on_the_wire[hdr.KIND] == "request"
    assert on_the_wire[hdr.TRACEPARENT] == req.traceparent


async def test_deadline_passed_raises_deadline_exceeded(world: World) -> None:
    req = make_request("sleep", timeout=0.5, query={"seconds": "3"})
    started = time.monotonic()
    try:
        await world.edge.request(req)
    except DeadlineExceeded:
        pass
    else:
        raise AssertionError("a reply arrived although the handler sleeps past the deadline")
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 1.5


async def test_no_adapter_fails_fast(world: World) -> None:
    req = make_request("echo", system="nobody-serves-this", timeout=10)
    started = time.monotonic()
    try:
        await world.edge.request(req)
    except NoResponders as exc:
        assert exc.status == 503
    else:
        raise AssertionError("a request for an unserved system got a reply")
    assert time.monotonic() - started < 1.0


async def test_late_reply_is_dropped_and_counted(world: World) -> None:
    late_before = world.edge.pending.counters.late
    req = make_request("sleep", timeout=0.3, query={"seconds": "0.8"})
    try:
        await world.edge.request(req)
    except DeadlineExceeded:
        pass
    else:
        raise AssertionError("the reply was expected to be late")
    await eventually(lambda: world.edge.pending.counters.late > late_before)
    assert req.id not in world.edge.pending._futures


async def test_stream_steps_arrive_in_order(world: World) -> None:
    req = make_request("stream", kind="stream", query={"count": "6"})
    steps: list[StreamStep] = [s async for s in world.edge.stream(req, idle_timeout=5)]
    assert [s.seq for s in steps] == [1, 2, 3, 4, 5, 6]
    assert [json.loads(s.items[0])["i"] for s in steps] == [0, 1, 2, 3, 4, 5]
    assert [s.next for s in steps] == ["0", "1", "2", "3", "4", "5"]
    assert [s.last for s in steps] == [False] * 5 + [True]


async def test_closing_a_stream_early_cancels_it_on_the_adapter(world: World) -> None:
    req = make_request("forever", kind="stream", timeout=30)
    received: list[StreamStep] = []
    async with contextlib.aclosing(world.edge.stream(req, idle_timeout=5)) as steps:
        async for step in steps:
            received.append(step)
            if len(received) == 2:
                break
    assert [s.seq for s in received] == [1, 2]
    responder = world.seen.responders[req.id]
    await asyncio.wait_for(responder.cancelled.wait(), 10)


async def test_an_error_step_raises(world: World) -> None:
    req = make_request("error", kind="stream")
    received: list[StreamStep] = []
    try:
        async for step in world.edge.stream(req, idle_timeout=5):
            received.append(step)
    except Remote as exc:
        assert exc.code == "upstream_error"
        assert exc.status == 502
        assert "fell over" in exc.message
    else:
        raise AssertionError("the stream ended without raising its error step")
    assert [s.seq for s in received] == [1]


async def test_adapters_of_one_system_share_the_requests(world: World) -> None:
    requests = [make_request("echo", body=str(i).encode()) for i in range(40)]
    replies = await asyncio.gather(*(world.edge.request(r) for r in requests))
    assert [r.body for r in replies] == [str(i).encode() for i in range(40)]
    handled_by = {world.seen.handled[r.id] for r in requests}
    assert handled_by == {bus.node for bus in world.adapters}


async def test_publish_command_returns_once_acknowledged(world: World) -> None:
    name = "orders"
    data = json.dumps({"order": uuid.uuid4().hex}).encode()
    await world.edge.publish_command(name, data, {"busgate-kind": "command"})
    # Acknowledged means stored: it can be read back right away.
    if world.transport == "nats":
        js = world.edge.nc.jetstream()  # type: ignore[attr-defined]
        subject = world.edge.names.command(name)
        stream = await js.find_stream_name_by_subject(subject)
        stored = await js.get_last_msg(stream, subject)
        assert stored.data == data
        assert stored.headers["busgate-kind"] == "command"
    else:
        async with kafka_reader(world, world.edge.names.command(), from_start=True) as consumer:
            record = await kafka_find(consumer, lambda r: r.value == data)  # type: ignore[attr-defined]
        assert record.key == name.encode()  # type: ignore[attr-defined]
        assert ("busgate-kind", b"command") in record.headers  # type: ignore[attr-defined]


async def test_a_request_arriving_after_its_deadline_is_not_handled(world: World) -> None:
    dropped_before = sum(bus.dropped_expired for bus in world.adapters)
    req = make_request("echo", timeout=-0.5)  # already expired when it reaches an adapter
    try:
        await world.edge.request(req)
    except DeadlineExceeded:
        pass
    else:
        raise AssertionError("an expired request got a reply")
    await eventually(lambda: sum(bus.dropped_expired for bus in world.adapters) > dropped_before)
    assert req.id not in world.seen.handled
