"""Floor edge: aiohttp that forwards each POST body with one bus request and returns the reply.

Deliberately the least code for the hop (no envelopes, ids, routing or auth): busgate's edge
is measured against it, so anything added here would lower the bar.

    python -m bench.floor.edge --bus nats://127.0.0.1:4222 --listen 127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from bench.floor.common import (
    CORRELATION,
    FETCH_WAIT_MS,
    REPLY_TO,
    REPLY_TOPIC_PREFIX,
    REQUEST_SUBJECT,
    ensure_topics,
    run,
    serve,
    split_bus,
)

TIMEOUT = 5.0
Requester = Callable[[bytes], Awaitable[bytes]]
REQUESTER: web.AppKey[Requester] = web.AppKey("requester")


async def nats_requester(url: str) -> AsyncIterator[Requester]:
    """nats-py request-reply: one wildcard inbox subscription, a future per request."""
    import nats

    nc = await nats.connect(url)

    async def request(body: bytes) -> bytes:
        msg = await nc.request(REQUEST_SUBJECT, body, timeout=TIMEOUT)
        return msg.data

    try:
        yield request
    finally:
        await nc.close()


async def kafka_requester(bootstrap: str) -> AsyncIterator[Requester]:
    """aiokafka request-reply: a reply topic of our own and a correlation id in the headers."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    reply_topic = f"{REPLY_TOPIC_PREFIX}{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [REQUEST_SUBJECT, reply_topic])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=FETCH_WAIT_MS
    )
    pending: dict[bytes, asyncio.Future[bytes]] = {}
    await producer.start()
    partition = TopicPartition(reply_topic, 0)
    consumer.assign([partition])
    await consumer.start()
    await consumer.seek_to_end(partition)

    async def replies() -> None:
        async for msg in consumer:
            corr = dict(msg.headers).get(CORRELATION)
            fut = pending.pop(corr, None) if corr else None
            if fut is not None and not fut.done():
                fut.set_result(msg.value or b"")

    reader = asyncio.create_task(replies())
    headers_to = (REPLY_TO, reply_topic.encode())

    async def request(body: bytes) -> bytes:
        corr = os.urandom(8).hex().encode()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        pending[corr] = fut
        try:
            await producer.send(REQUEST_SUBJECT, body, headers=[headers_to, (CORRELATION, corr)])
            return await asyncio.wait_for(fut, TIMEOUT)
        finally:
            pending.pop(corr, None)

    try:
        yield request
    finally:
        reader.cancel()
        await consumer.stop()
        await producer.stop()


async def forward(request: web.Request) -> web.Response:
    requester = request.app[REQUESTER]
    try:
        data = await requester(await request.read())
    except Exception as exc:
        return web.Response(status=503, text=f"{type(exc).__name__}: {exc}")
    if not data:
        return web.Response(status=502, text="runner call failed")
    return web.Response(body=data, content_type="application/json")


async def readyz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def app(bus: str) -> web.Application:
    kind, address = split_bus(bus)
    factory = nats_requester if kind == "nats" else kafka_requester

    async def bus_ctx(application: web.Application) -> AsyncIterator[None]:
        async for requester in factory(address):
            application[REQUESTER] = requester
            yield

    application = web.Application()
    application.cleanup_ctx.append(bus_ctx)
    application.router.add_post("/{tail:.*}", forward)
    application.router.add_get("/readyz", readyz)
    return application


async def main(args: argparse.Namespace) -> None:
    context = None
    if args.tls_cert:  # HTTPS: the floor of busgate's [gateway.tls] scenario
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    await serve(app(args.bus), args.listen, context)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bus", required=True, help="nats://HOST:PORT or kafka://HOST:PORT")
    parser.add_argument("--listen", default="127.0.0.1:8080")
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate...")
    parser.add_argument("--tls-key", help="...and this key")
    run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
