"""The runner kit under FastStream's test brokers: no broker process, as a runner author would
test a runner. (busgate's own end-to-end tests use real brokers: tests/e2e/test_native.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from faststream.kafka import TestKafkaBroker
from faststream.nats import TestNatsBroker

from busgate.contracts.codec import decode, encode
from busgate.contracts.wire import Cancel, Credit, Message, Presence, Reply, Request, StreamStep
from busgate.runners.kit import Runner
from busgate.runners.native import build

REPLY = "test.reply"


class Harness:
    """The edge's side, in miniature: sends Requests, collects what comes back."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.got: asyncio.Queue[Message] = asyncio.Queue()

        @runner.broker.subscriber(REPLY)
        async def replies(body: bytes) -> None:
            self.got.put_nowait(decode(body))

    async def send(self, dest: str, msg: Message) -> None:
        await self.runner.broker.publish(encode(msg), dest)

    async def request(self, path: str, body: bytes = b"{}", **fields: object) -> Request:
        req = Request(
            id=f"r-{path}-{time.monotonic_ns()}",
            system=self.runner.system,
            path=path,
            body=body,
            reply_to=REPLY,
            deadline=time.time() + 5,
            **fields,  # type: ignore[arg-type]
        )
        await self.send(self.runner.names.request(self.runner.system), req)
        return req

    async def next(self) -> Message:
        async with asyncio.timeout(5):
            return await self.got.get()


@pytest.fixture(params=["nats", "kafka"])
async def harness(request) -> AsyncIterator[Harness]:
    runner = build(bus=f"{request.param}://127.0.0.1:4222")
    harness = Harness(runner)
    testing = TestNatsBroker if request.param == "nats" else TestKafkaBroker
    async with testing(runner.broker, connect_only=False):  # type: ignore[arg-type]
        yield harness


async def test_saga_answers_with_a_reply(harness: Harness) -> None:
    req = await harness.request("echo", b'{"a":1}')
    reply = await harness.next()
    assert isinstance(reply, Reply) and reply.id == req.id
    assert (reply.status, reply.body) == (200, b'{"a":1}')


async def test_errors_become_typed_replies(harness: Harness) -> None:
    await harness.request("fail", b'{"kind":"conflict"}')
    reply = await harness.next()
    assert isinstance(reply, Reply) and reply.error is not None
    assert (reply.status, reply.error.code) == (409, "conflict")
    await harness.request("echo", b"{not json")
    reply = await harness.next()
    assert isinstance(reply, Reply) and reply.status == 400


async def test_stream_waits_for_credits_and_stops_on_cancel(harness: Harness) -> None:
    """Two credits: two steps, then nothing until a Credit; a Cancel ends the saga loop."""
    runner = harness.runner
    req = await harness.request("count", b'{"to": 0}', kind="stream", credits=2)
    first, second = await harness.next(), await harness.next()
    assert isinstance(first, StreamStep) and isinstance(second, StreamStep)
    assert [first.seq, second.seq] == [1, 2] and first.credit_to
    assert harness.got.empty() and runner.inflight == 1
    await harness.send(first.credit_to, Credit(id=req.id, limit=3))
    third = await harness.next()
    assert isinstance(third, StreamStep) and third.seq == 3 and third.items == [b'{"n":3}']
    await harness.send(runner.names.control, Cancel(id=req.id))
    await harness.send(first.credit_to, Credit(id=req.id, limit=10))
    async with asyncio.timeout(5):
        await runner.idle()
    assert harness.got.empty()


async def test_presence_names_the_system() -> None:
    runner = Runner("orders", bus="nats://127.0.0.1:4222")
    beats: asyncio.Queue[Message] = asyncio.Queue()

    @runner.broker.subscriber(runner.names.control)
    async def control(body: bytes) -> None:
        beats.put_nowait(decode(body))

    async with TestNatsBroker(runner.broker, connect_only=False):
        await runner.announce()
        beat = await beats.get()
    assert isinstance(beat, Presence) and beat.systems == ("orders",) and beat.ttl > 0


async def test_a_cancel_that_overtakes_its_request_drops_it(harness: Harness) -> None:
    """On Kafka a Cancel (control topic) can arrive before its request (request topic)."""
    runner = harness.runner
    await harness.send(runner.names.control, Cancel(id="early-1"))
    await harness.send(
        runner.names.request(runner.system),
        Request(
            id="early-1",
            system=runner.system,
            path="count",
            kind="stream",
            body=b'{"to": 0}',
            reply_to=REPLY,
            deadline=time.time() + 5,
        ),
    )
    req = await harness.request("echo", b'{"after": 1}')
    reply = await harness.next()  # a step of the cancelled stream would have come first
    assert isinstance(reply, Reply) and reply.id == req.id
    async with asyncio.timeout(5):
        await runner.idle()  # nothing left running: the stream never started
