"""Messages with headers written to nats-py's outgoing buffer as one pre-built ``HPUB``.

nats-py encodes a header dict in Python per message: each key stripped, matched against a
regex, encoded; each value stripped, translated, encoded; all appended to a bytearray. For
busgate's three bus headers (request id, kind, traceparent) that was about a quarter of the
gap between the edge's command publish and the floor's bare ``js.publish`` (cProfile, last
session). Here the block is one f-string, encoded once, and checked once for what would
break the protocol (CR or LF in a header, white space in a subject); anything else goes
through ``nc.publish`` as before, which validates (and refuses) the odd input itself.

nats-py has no public call for a pre-encoded message, so this module uses its private
``_send_command`` / ``_flush_pending`` / ``_flush_queue`` (the same steps its ``publish``
takes after encoding; ``leave`` is the only other module using a private call);
``tests/bus/test_nats_wire.py`` fails loudly when a nats-py release changes them. Header keys
are busgate's own constants, never a client's.
"""

from __future__ import annotations

import re

from nats import errors
from nats.aio.client import Client

_BAD_SUBJECT = re.compile(r"\s")
"""White space (CR and LF included) would end or split the protocol line."""


def header_block(headers: dict[str, str]) -> bytes | None:
    """The NATS/1.0 header block for ``headers``, or None when a key or value holds CR or
    LF (``publish`` then leaves the message to nats-py's own encoding)."""
    lines = "".join([f"{key}: {value}\r\n" for key, value in headers.items()])
    count = len(headers)
    if lines.count("\n") != count or lines.count("\r") != count:
        return None
    return f"NATS/1.0\r\n{lines}\r\n".encode()


async def publish(
    nc: Client, subject: str, payload: bytes, reply: str, headers: dict[str, str]
) -> None:
    """``nc.publish(subject, payload, reply=reply, headers=headers)``, with the header block
    built here. The caller checks the connection and the payload's size first (as
    ``NatsBus._send`` does); nats-py's errors are the same as ``nc.publish``'s."""
    block = header_block(headers) if headers else None
    if block is None or _BAD_SUBJECT.search(subject) or _BAD_SUBJECT.search(reply):
        await nc.publish(subject, payload, reply=reply, headers=headers or None)
        return
    size = len(block)
    line = (
        f"HPUB {subject} {reply} {size} {size + len(payload)}\r\n"
        if reply
        else (f"HPUB {subject} {size} {size + len(payload)}\r\n")
    )
    stats = nc.stats
    stats["out_msgs"] += 1
    stats["out_bytes"] += len(payload)
    await nc._send_command(b"".join((line.encode(), block, payload, b"\r\n")))
    flushes = nc._flush_queue
    if flushes is not None and flushes.empty():
        await nc._flush_pending()


async def publish_many(nc: Client, messages: list[tuple[str, bytes]]) -> int:
    """Header-less messages written to nats-py's buffer as one command: what a node's span
    flush sends (one message per call, hundreds per flush), where ``nc.publish`` per message
    cost an await, a protocol line built through its checks and a flush attempt each. Subjects
    are the caller's own (no white space: checked), payloads over the server's limit are
    skipped. Returns how many were skipped; nats-py's errors are ``nc.publish``'s."""
    if nc.is_closed:
        raise errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise errors.ConnectionDrainingError
    limit = nc.max_payload
    parts: list[bytes] = []
    skipped = sent = 0
    for subject, payload in messages:
        size = len(payload)
        if size > limit or _BAD_SUBJECT.search(subject):
            skipped += 1
            continue
        parts.append(f"PUB {subject} {size}\r\n".encode())
        parts.append(payload)
        parts.append(b"\r\n")
        sent += size
    if not parts:
        return skipped
    if not nc.is_connected and (
        nc._max_pending_size <= 0 or sent + nc._pending_data_size > nc._max_pending_size
    ):
        raise errors.OutboundBufferLimitError  # as nc.publish during a reconnection
    stats = nc.stats
    stats["out_msgs"] += len(messages) - skipped
    stats["out_bytes"] += sent
    await nc._send_command(b"".join(parts))
    flushes = nc._flush_queue
    if flushes is not None and flushes.empty():
        await nc._flush_pending()
    return skipped
