"""The edge retries a call only when no adapter answered it (``edge.resilience.send``), on a
real nats-server: a GET sent before its system's adapter is up is answered once the adapter
comes, within the deadline; a POST is not retried and fails fast."""

from __future__ import annotations

import asyncio
import time

from aiohttp.test_utils import TestClient, TestServer

from busgate import bus as bus_
from busgate.contracts.config import parse
from busgate.edge.app import create_app
from tests.edge.conftest import echo


def config(nats_url: str):
    return parse(
        {
            "gateway": {"id": "retry", "bus": nats_url, "prefix": "edge-retry"},
            "systems": {"late": {"type": "rpc", "base_url": "http://127.0.0.1:9"}},
            "channels": {
                "late": {
                    "system": "late",
                    "timeout": 5.0,
                    "resilience": {
                        "retry": {
                            "attempts": 20,
                            "wait": 0.1,
                            "backoff": 1.0,
                            "jitter": 0.0,
                            "on_codes": ["no_adapter"],
                        }
                    },
                }
            },
        }
    )


async def test_get_waits_for_an_adapter_post_does_not(nats_server):
    cfg = config(nats_server.url)
    client = TestClient(TestServer(create_app(cfg)))
    await client.start_server()
    adapter = bus_.from_url(nats_server.url, node="late-adapter", prefix="edge-retry")
    try:
        start = time.monotonic()
        resp = await client.post("/api/request/late/x", json={"a": 1})
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "no_adapter"
        assert time.monotonic() - start < 0.5  # not retried

        async def adapter_later() -> None:
            await asyncio.sleep(0.4)
            await adapter.connect()
            await adapter.serve(["late"], echo)

        late = asyncio.create_task(adapter_later())
        start = time.monotonic()
        resp = await client.get("/api/request/late/x", params={"a": "1"})
        took = time.monotonic() - start
        await late
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"a": "1"}
        assert took >= 0.4  # it was answered by the adapter that came late
    finally:
        await client.close()
        await adapter.close()
