"""A node that joins after an adapter's heartbeat can call that adapter at once.

Kafka: the edge fails fast on its presence view (``requires_presence``), so a late node must
know the adapters when ``connect()`` returns -- it replays the control topic's last seconds.
NATS: core NATS keeps no history, so a late node's presence view stays empty until the
adapter's next heartbeat; calls must not depend on it (requests are routed by the server's
subscription interest, and "no responders" is the fail-fast signal), so its first call is
answered at once all the same.
"""

from __future__ import annotations

import time
import uuid

import pytest

from busgate.bus import from_url
from busgate.contracts.wire import Reply, Request
from tests.bus.conftest import TRANSPORTS


@pytest.fixture
def broker_url(request, nats_server, tansu_broker) -> str:
    return nats_server.url if request.param == "nats" else tansu_broker.url


@pytest.mark.parametrize("broker_url", TRANSPORTS, indirect=True)
async def test_a_late_node_sees_an_adapter_that_announced_before_it_started(broker_url):
    prefix = f"replay{uuid.uuid4().hex[:6]}"
    adapter = from_url(broker_url, node="early-adapter", prefix=prefix)
    await adapter.connect()

    async def answer(req, responder):
        await responder.reply(Reply(id=req.id, body=b"from early-adapter"))

    await adapter.serve(["late"], answer)  # announces once; no periodic heartbeat here
    edge = from_url(broker_url, node="late-edge", prefix=prefix)
    try:
        await edge.connect()
        if edge.requires_presence:
            # Known when connect() returns, from the replayed announcement.
            assert edge.presence.nodes("late") == ["early-adapter"]
        else:
            # Nothing replayed: the announcement was sent before this node listened.
            assert not edge.presence.serves("late")
        # Either way the first call, made at once and not retried, is answered.
        first = Request(id=uuid.uuid4().hex, system="late", path="x", deadline=time.time() + 5)
        reply = await edge.request(first)
        assert (reply.status, reply.body) == (200, b"from early-adapter")
    finally:
        await edge.close()
        await adapter.close()
