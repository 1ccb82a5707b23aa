"""Bits the floor processes share: bus URL parsing, the event loop, Kafka topic set-up."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Coroutine
from typing import Any

REQUEST_SUBJECT = "floor.req"
"""NATS subject and Kafka topic of floor requests (one floor per broker)."""

REPLY_TOPIC_PREFIX = "floor.reply."
FETCH_WAIT_MS = int(os.environ.get("FLOOR_FETCH_WAIT_MS", "5"))
"""Kafka fetch long-poll: Tansu answers a fetch when this runs out rather than when data
arrives, so it bounds the latency of each hop (and costs idle polling when small)."""
CORRELATION = "correlation-id"
REPLY_TO = "reply-to"


def split_bus(url: str) -> tuple[str, str]:
    """``nats://h:p`` → (``nats``, ``nats://h:p``); ``kafka://h:p`` → (``kafka``, ``h:p``)."""
    scheme, _, rest = url.partition("://")
    if scheme == "nats":
        return "nats", url
    if scheme == "kafka":
        return "kafka", rest
    raise ValueError(f"unsupported bus URL {url!r}")


def host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host or "127.0.0.1", int(port)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop (busgate's loop too), so the floor is not slowed by the stdlib loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main)
    else:
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(main)


async def serve(application: Any, listen: str, ssl_context: Any = None) -> None:
    """Serve an aiohttp app on ``listen`` until cancelled (both floor servers do this);
    HTTPS with ``ssl_context``."""
    from aiohttp import web

    host, port = host_port(listen)
    runner = web.AppRunner(application, access_log=None, handle_signals=True)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024, ssl_context=ssl_context).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def ensure_topics(bootstrap: str, topics: list[str]) -> None:
    """Create one-partition topics up front, so consumers can ``assign`` without a group join."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for topic in topics:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
