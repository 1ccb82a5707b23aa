"""The runner kit on a real nats-server: exactly one answer per request, and an answer too
large for the bus becomes a small error instead of silence."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from busgate.brokers import NatsServer
from busgate.contracts.codec import decode, encode
from busgate.contracts.wire import Reply, Request
from busgate.runners.kit import Meta, Runner
from busgate.runners.native import build

pytestmark = pytest.mark.nats


@pytest.fixture
async def runner(nats_server: NatsServer) -> AsyncIterator[Runner]:
    runner = build("kit", bus=nats_server.url, prefix="kittest")

    @runner.saga("big")
    async def big(parameters: dict[str, Any], meta: Meta) -> dict[str, Any]:
        return {"x": "a" * 2_000_000}

    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop(grace=1)


async def test_one_answer_per_request(runner: Runner, nats_server: NatsServer) -> None:
    """The edge sends requests with a NATS reply subject; FastStream would answer it with the
    handler's return value (an empty message) besides the kit's Reply, unless told not to."""
    nc = await nats.connect(nats_server.url)
    got: asyncio.Queue[Msg] = asyncio.Queue()
    try:
        inbox = "kittest.reply.test.x"

        async def on_msg(msg: Msg) -> None:
            got.put_nowait(msg)

        await nc.subscribe(inbox, cb=on_msg)
        for n in range(3):
            req = Request(
                id=f"one-{n}",
                system="kit",
                path="echo",
                body=b'{"n":%d}' % n,
                reply_to=inbox,
                deadline=time.time() + 5,
            )
            await nc.publish(runner.names.request("kit"), encode(req), reply=inbox)
        seen: list[Any] = []
        async with asyncio.timeout(5):
            while len([m for m in seen if isinstance(m, Reply)]) < 3:
                msg = await got.get()
                seen.append(decode(msg.data) if msg.data else msg.data)
            await nc.flush()
        assert all(isinstance(m, Reply) and m.status == 200 for m in seen), seen
    finally:
        await nc.close()


async def test_an_answer_too_large_for_the_bus_is_a_502(
    runner: Runner, nats_server: NatsServer
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        inbox = "kittest.reply.test.big"
        sub = await nc.subscribe(inbox)
        req = Request(
            id="big-1", system="kit", path="big", reply_to=inbox, deadline=time.time() + 5
        )
        await nc.publish(runner.names.request("kit"), encode(req))
        msg = await sub.next_msg(timeout=5)
        reply = decode(msg.data)
        assert isinstance(reply, Reply) and reply.error is not None
        assert (reply.status, reply.error.code) == (502, "reply_too_large")
    finally:
        await nc.close()


async def test_sigterm_after_the_broker_went_away_exits_cleanly() -> None:
    """A whole stack stopping stops the broker first or alongside: the runner still exits 0,
    promptly (FastStream's stop raised on the dead connection: exit 1, with a traceback)."""
    server = NatsServer()
    server.start()
    args = ["-m", "busgate", "runner", "native", "--bus", server.url, "--system", "gone"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while b"serving system gone" not in await proc.stderr.readline():
                pass
        server.stop()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            rest = await proc.stderr.read()
            assert await proc.wait() == 0, rest.decode()[-2000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        server.stop()
