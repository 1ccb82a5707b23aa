"""Requests that nobody waits for (``X-Async: gateway``): on the bus, no reply address."""

from __future__ import annotations

import msgspec

from busgate.bus import headers as hdr
from busgate.bus.base import Bus
from busgate.contracts.codec import encode
from busgate.contracts.wire import Request


async def post(bus: Bus, req: Request) -> None:
    """Send ``req`` to its system's adapters and return once the transport took it (Kafka:
    the broker's ack; NATS: handed to the connection). Fails fast like a request (503) when
    the bus is down or, where presence is known, no adapter serves the system."""
    bus._check_ready(req.system)
    req = msgspec.structs.replace(req, reply_to="")
    await bus._send(bus.names.request(req.system), encode(req), hdr.for_request(req))
