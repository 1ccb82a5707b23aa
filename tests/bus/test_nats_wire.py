"""``bus.nats.wire`` (pre-built header blocks) and the NATS bus's own JetStream publish (one
ack inbox, one sweep timer), against a real nats-server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg

from busgate.brokers import NatsServer
from busgate.bus.nats import NatsBus, transport, wire
from busgate.contracts.errors import BusUnavailable

pytestmark = pytest.mark.nats


@pytest_asyncio.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[NatsBus]:
    the_bus = NatsBus([nats_server.url], node="wire", prefix=f"w{uuid.uuid4().hex[:8]}")
    await the_bus.connect()
    yield the_bus
    await the_bus.close()


async def _received(nc: Client, subject: str) -> asyncio.Future[Msg]:
    got: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Msg) -> None:
        if not got.done():
            got.set_result(msg)

    await nc.subscribe(subject, cb=on_msg)
    await nc.flush()
    return got


def test_nats_py_still_has_what_wire_writes_through() -> None:
    """``wire.publish`` uses nats-py's private buffer calls: a release without them must
    fail here, not in production."""
    client = Client()
    assert callable(client._send_command)
    assert callable(client._flush_pending)
    assert hasattr(client, "_flush_queue")
    assert isinstance(client.stats["out_msgs"], int)


async def test_headers_arrive_as_nats_py_would_send_them(bus: NatsBus) -> None:
    subject = f"{bus.names.prefix}.wire.{uuid.uuid4().hex}"
    got = await _received(bus.nc, subject)
    headers = {"busgate-request-id": "abc-1", "busgate-kind": "command", "traceparent": "00-x"}
    await wire.publish(bus.nc, subject, b"\x81\xa1a\x01", "reply.to.me", headers)
    msg = await asyncio.wait_for(got, 10)
    assert msg.data == b"\x81\xa1a\x01"
    assert msg.reply == "reply.to.me"
    assert dict(msg.headers or {}) == headers


async def test_a_line_break_in_a_header_injects_nothing(bus: NatsBus) -> None:
    """CR/LF in a value is left to nats-py's encoding (which folds it away): it must not
    end the header block or add a header."""
    subject = f"{bus.names.prefix}.wire.{uuid.uuid4().hex}"
    got = await _received(bus.nc, subject)
    await wire.publish(bus.nc, subject, b"x", "", {"busgate-kind": "a\r\nX-Injected: 1"})
    msg = await asyncio.wait_for(got, 10)
    assert msg.data == b"x"
    assert "X-Injected" not in (msg.headers or {})


def test_header_block_refuses_line_breaks() -> None:
    assert wire.header_block({"k": "v"}) == b"NATS/1.0\r\nk: v\r\n\r\n"
    assert wire.header_block({"k": "v\nw"}) is None
    assert wire.header_block({"k\r": "v"}) is None


async def test_command_publish_without_a_stream_is_unavailable_at_once(bus: NatsBus) -> None:
    """The stream gone (deleted behind the edge's back): JetStream has no responder for the
    subject, and the publish is a BusUnavailable (503) now, not after the ack timeout."""
    await bus.publish_command("orders.first", b"{}")
    await bus.nc.jetstream().delete_stream(bus.command_stream)
    started = time.monotonic()
    with pytest.raises(BusUnavailable):
        await bus.publish_command("orders.second", b"{}")
    assert time.monotonic() - started < transport.ACK_TIMEOUT / 2
    assert not bus._acks


async def test_an_overdue_ack_fails_its_publish(bus: NatsBus) -> None:
    """One sweep timer stands in for a timeout per publish: an ack not back by its deadline
    fails the publish with BusUnavailable, and the timer stops once nothing waits."""
    loop = asyncio.get_running_loop()
    late: asyncio.Future[Msg] = loop.create_future()
    waiting: asyncio.Future[Msg] = loop.create_future()
    bus._acks["late"] = (late, time.monotonic() - 1)
    bus._acks["waiting"] = (waiting, time.monotonic() + 60)
    bus._sweep_acks()
    assert isinstance(late.exception(), BusUnavailable)
    assert not waiting.done()
    assert list(bus._acks) == ["waiting"]
    assert bus._ack_sweep is not None  # still one waiting: swept again later
    bus._acks.clear()
    bus._sweep_acks()
    assert bus._ack_sweep is None
    waiting.cancel()


async def test_acks_are_matched_to_their_publish(bus: NatsBus) -> None:
    """Many publishes in flight at once: each returns once its own message is stored."""
    names = [f"orders.{n}" for n in range(50)]
    await asyncio.gather(*(bus.publish_command(n, n.encode()) for n in names))
    assert not bus._acks
    js = bus.nc.jetstream()
    for name in names[::10]:
        stored = await js.get_last_msg(bus.command_stream, bus.names.command(name))
        assert stored.data == name.encode()


async def test_publish_many_sends_each_message_on_its_subject_in_order(bus: NatsBus) -> None:
    """A span flush's messages go out in one write: each must still arrive whole, on its own
    subject (``busgate trace`` finds a call by it), and one over the server's limit is
    skipped and counted, not sent and not fatal to the rest."""
    base = f"{bus.names.prefix}.many.{uuid.uuid4().hex}"
    got: list[Msg] = []
    all_in = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        got.append(msg)
        if len(got) == 3:
            all_in.set()

    await bus.nc.subscribe(base + ".>", cb=on_msg)
    await bus.nc.flush()
    messages = [
        (f"{base}.a.1", b"first"),
        (f"{base}.b.2", b"x" * (bus.nc.max_payload + 1)),
        (f"{base}.c.3", b""),
        (f"{base}.d.4", b"\r\nPUB not.a.command 1\r\n"),
    ]
    assert await wire.publish_many(bus.nc, messages) == 1
    await asyncio.wait_for(all_in.wait(), 10)
    assert [(m.subject, m.data) for m in got] == [
        (f"{base}.a.1", b"first"),
        (f"{base}.c.3", b""),
        (f"{base}.d.4", b"\r\nPUB not.a.command 1\r\n"),
    ]
