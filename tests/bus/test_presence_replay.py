"""A node that joins after an adapter's heartbeat still knows that adapter at once."""

from __future__ import annotations

import pytest

from busgate.bus import from_url
from busgate.contracts.wire import Reply
from tests.bus.conftest import TRANSPORTS


@pytest.fixture
def broker_url(request, nats_server, tansu_broker) -> str:
    return nats_server.url if request.param == "nats" else tansu_broker.url


@pytest.mark.parametrize("broker_url", TRANSPORTS, indirect=True)
async def test_a_late_node_sees_an_adapter_that_announced_before_it_started(broker_url):
    adapter = from_url(broker_url, node="early-adapter", prefix="replay")
    await adapter.connect()

    async def answer(req, responder):
        await responder.reply(Reply(id=req.id))

    await adapter.serve(["late"], answer)  # announces once; no periodic heartbeat here
    edge = from_url(broker_url, node="late-edge", prefix="replay")
    try:
        await edge.connect()
        if broker_url.startswith("nats"):
            # Core NATS keeps no history: a late node learns of adapters from their next
            # heartbeat, and meanwhile the server's "no responders" answers for them.
            assert not edge.presence.serves("late")
        else:
            # Known when connect() returns: the first request must not fail with 503.
            assert edge.presence.nodes("late") == ["early-adapter"]
    finally:
        await edge.close()
        await adapter.close()
