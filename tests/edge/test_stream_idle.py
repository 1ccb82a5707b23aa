"""The edge's side of a stream whose adapter falls silent, on the in-memory bus."""

from __future__ import annotations

import asyncio
import json

from busgate.contracts.config import parse
from busgate.edge import stream
from tests.sse_client import collect


async def test_a_silent_adapter_ends_the_stream_with_an_error_after_the_idle_timeout(
    edge, monkeypatch
):
    monkeypatch.setattr(stream, "IDLE_MARGIN", 0.0)
    config = parse(
        {
            "gateway": {"id": "t", "stream_heartbeat": 0.05, "return_ids": "always"},
            "systems": {"demo": {"type": "rpc", "base_url": "http://127.0.0.1:9", "timeout": 0.2}},
            "channels": {"demo": {"system": "demo"}},
        }
    )
    assert stream.idle_timeout(config, "demo") == 0.25
    release = asyncio.Event()

    async def silent_after_one_step(req, responder) -> None:
        await responder.step([b"1"], next="1")
        await release.wait()  # an adapter that hangs: no more steps, no keepalives

    client, _ = await edge(config, silent_after_one_step)
    try:
        resp = await client.get("/api/stream/demo/count")
        assert resp.status == 200
        got = await collect(resp)
    finally:
        release.set()
    assert [e.kind for e in got] == ["message", "error"]
    error = json.loads(got[1].data)["error"]
    assert error["code"] == "deadline_exceeded"
    assert error["requestId"] == resp.headers["X-Request-Id"]
