"""Producers: how they are made, and how a send waits for its acknowledgement."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer

from busgate.bus.kafka.routing import partition
from busgate.bus.limits import DEFAULT_MAX_MESSAGE
from busgate.contracts.errors import BusUnavailable


async def start_producer(
    client: Mapping[str, Any],
    *,
    client_id: str,
    acks: int | str,
    request_timeout: float,
    max_request_size: int = DEFAULT_MAX_MESSAGE,
) -> AIOKafkaProducer:
    """A started producer with busgate's partitioner (see :mod:`.routing`); every step of a
    send (the metadata wait, a full buffer, the batch's delivery) is bounded by ``timeout``
    seconds (``request_timeout``)."""
    producer = AIOKafkaProducer(
        **client,
        client_id=client_id,
        acks=acks,
        linger_ms=0,
        partitioner=partition,
        request_timeout_ms=int(request_timeout * 1000),
        max_request_size=max_request_size,
    )
    try:
        await producer.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 2)
        raise
    return producer


def _relay(waiter: asyncio.Future[None], delivery: asyncio.Future[Any]) -> None:
    """Pass a delivery's outcome on to the future a send awaits."""
    if waiter.done():
        return
    if delivery.cancelled():
        waiter.set_exception(BusUnavailable("the message was not delivered"))
    elif (exc := delivery.exception()) is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(None)


async def send_acked(
    producer: Any,
    acks: set[asyncio.Future[None]],
    dest: str,
    data: bytes,
    *,
    key: bytes,
    headers: list[tuple[str, bytes]],
    partition: int | None,
) -> None:
    """Send and wait for the broker's acknowledgement, through a future kept in ``acks``
    while it waits, so the transport can fail it at once when the broker is gone."""
    delivery = await producer.send(dest, data, key=key, headers=headers, partition=partition)
    if delivery.done():
        delivery.result()
        return
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    delivery.add_done_callback(functools.partial(_relay, waiter))
    acks.add(waiter)
    try:
        await waiter
    finally:
        acks.discard(waiter)
