"""How large a message the bus carries, and so how large a request body the edge accepts.

Both buses refuse large messages: nats-server closes the connection of a client that
publishes more than its ``max_payload`` (1 MiB unless configured), and Kafka refuses a record
over the producer's ``max_request_size`` or the broker's ``message.max.bytes`` (both 1 MiB by
default). A body between that and ``gateway.max_body`` (10 MiB) used to answer 500. Now:

- the edge accepts bodies up to :func:`body_limit` (413 beyond, naming it);
- a transport refuses a message over its limit with ``MessageTooLarge`` before it reaches
  the server, so the connection survives (a 413 at the edge);
- an adapter whose reply or stream step is too large sends a small ``reply_too_large``
  error instead (``bus.base.Responder``).
"""

from __future__ import annotations

DEFAULT_MAX_MESSAGE = 1024 * 1024
"""What both buses carry unless configured otherwise: NATS' ``max_payload`` and Kafka's
``max_request_size`` / ``message.max.bytes`` defaults, bytes."""

HEADER_ROOM = 1024
"""Bytes of a bus message left for what travels beside the encoded envelope: NATS headers
(counted in ``max_payload`` by the server, not by nats-py's own check), or Kafka's record
and batch framing, key and headers (counted in ``max_request_size``). Busgate's are a few
hundred bytes at most (request id, kind, traceparent)."""

ENVELOPE_ROOM = 16 * 1024
"""Bytes of a request message kept for the envelope around the body: ids, trace context,
channel, path and query, forwarded headers, identity and origin. A request whose envelope
is larger still is refused by the transport (413), never sent."""


def carried(limit: int) -> int:
    """The largest encoded envelope a transport whose own limit is ``limit`` may send."""
    return max(0, limit - HEADER_ROOM)


def body_limit(max_body: int, max_message: int) -> int:
    """The largest request body the edge accepts: ``max_body``, or less when the bus
    carries less than that plus its envelope (``max_message`` 0 = no known limit)."""
    if max_message <= 0:
        return max_body
    return max(0, min(max_body, max_message - ENVELOPE_ROOM))
