"""Floor responder: takes requests off the bus, POSTs each to the runner, answers the reply.

The runner is called exactly as busgate's RPC adapter calls it (``POST BASE/echo`` with
``{"parameters": BODY, "meta": {...}}`` over a keep-alive connection pool), so the floor and
busgate make the same hops and differ only in the code around them. The body is spliced in
as raw bytes, not re-parsed: the floor is the least work the hop needs.

    python -m bench.floor.responder --bus nats://127.0.0.1:4222 \
        --runner http://127.0.0.1:9000/api/demo/echo
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
from collections.abc import Awaitable, Callable

import aiohttp

from bench.floor.common import (
    CORRELATION,
    FETCH_WAIT_MS,
    REPLY_TO,
    REQUEST_SUBJECT,
    ensure_topics,
    run,
    split_bus,
)

CONNECTIONS = 100
JSON = {"Content-Type": "application/json"}


def caller(session: aiohttp.ClientSession, url: str) -> Callable[[bytes], Awaitable[bytes]]:
    """POST the wrapped body to the runner; an empty answer tells the edge the call failed."""
    ids = itertools.count()

    async def call(body: bytes) -> bytes:
        meta = b'{"requestId":"floor-%d"}' % next(ids)
        payload = b'{"parameters":' + body + b',"meta":' + meta + b"}"
        try:
            async with session.post(url, data=payload, headers=JSON) as resp:
                data = await resp.read()
                return data if resp.status == 200 else b""
        except aiohttp.ClientError:
            return b""

    return call


async def serve_nats(url: str, call: Callable[[bytes], Awaitable[bytes]]) -> None:
    import nats
    from nats.aio.msg import Msg

    nc = await nats.connect(url)
    tasks: set[asyncio.Task[None]] = set()

    async def answer(msg: Msg) -> None:
        await msg.respond(await call(msg.data))

    async def on_msg(msg: Msg) -> None:
        # nats-py awaits callbacks one by one; a task per message lets calls overlap.
        task = asyncio.create_task(answer(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await nc.subscribe(REQUEST_SUBJECT, queue="floor", cb=on_msg)
    try:
        await stopped()
    finally:
        await nc.close()


async def serve_kafka(bootstrap: str, call: Callable[[bytes], Awaitable[bytes]]) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

    await ensure_topics(bootstrap, [REQUEST_SUBJECT])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=FETCH_WAIT_MS
    )
    await producer.start()
    partition = TopicPartition(REQUEST_SUBJECT, 0)
    consumer.assign([partition])  # no consumer group: no 5 s join, same hops
    await consumer.start()
    await consumer.seek_to_end(partition)
    tasks: set[asyncio.Task[None]] = set()

    async def answer(msg: ConsumerRecord[bytes, bytes]) -> None:
        headers = dict(msg.headers)
        reply_to, corr = headers.get(REPLY_TO), headers.get(CORRELATION)
        if not reply_to or not corr:
            return
        data = await call(msg.value or b"")
        await producer.send(reply_to.decode(), data, headers=[(CORRELATION, corr)])

    async def consume() -> None:
        async for msg in consumer:
            task = asyncio.create_task(answer(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    reader = asyncio.create_task(consume())
    try:
        await stopped()
    finally:
        reader.cancel()
        await consumer.stop()
        await producer.stop()


async def stopped() -> None:
    """Wait for SIGTERM or SIGINT, so the bus connection closes cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def main(args: argparse.Namespace) -> None:
    kind, address = split_bus(args.bus)
    connector = aiohttp.TCPConnector(limit=CONNECTIONS, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector) as session:
        call = caller(session, args.runner)
        serve = serve_nats if kind == "nats" else serve_kafka
        with contextlib.suppress(asyncio.CancelledError):
            await serve(address, call)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bus", required=True, help="nats://HOST:PORT or kafka://HOST:PORT")
    parser.add_argument("--runner", required=True, help="URL the runner answers, e.g. …/echo")
    run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
