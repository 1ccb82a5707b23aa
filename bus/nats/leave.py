"""Leaving a queue group without losing the messages the server already routed to us.

nats-py's ``Subscription.drain()`` sends UNSUB, makes a PING/PONG round trip, hands on what
is queued and removes the subscription. But nats-server may write a message it routed to
this member just before processing the UNSUB *after* that PONG: the publishing connection
had already picked this member and delivers a moment later. ``drain()`` has removed the
subscription by then, and nats-py drops the message unseen -- for busgate, a request lost
in a rolling restart (``tests/bus/test_drain.py`` failed so, rarely, under load). Measured
against a real server: a publisher blasting a two-member group lost 20-46 messages per
drain in 100 of 100 trials (1,554 in all); 20-30 arrived up to 0.7 ms after the PONG. With
:data:`GRACE` between the round trip and the removal: none lost in 60 trials.

Uses nats-py's private ``_send_unsubscribe`` (the UNSUB that ``drain`` sends);
``tests/bus/test_nats_leave.py`` fails loudly if a release changes it.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.aio.subscription import Subscription

GRACE = 0.5
"""Seconds a leaving member still takes messages after its UNSUB round trip: late
deliveries come within a millisecond on an idle machine; this leaves room for a loaded one."""


async def leave(nc: Client, sub: Subscription, grace: float = GRACE) -> None:
    """Unsubscribe ``sub`` from its queue group, hand on every message the server sent it,
    then remove it. Raises nats-py's errors as ``drain`` does (closed, flush timeout)."""
    await nc._send_unsubscribe(sub._id)
    await nc.flush()
    await asyncio.sleep(grace)  # the late deliveries still reach the callback
    await sub.drain()  # type: ignore[no-untyped-call]  # a second UNSUB: ignored
