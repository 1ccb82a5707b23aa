"""An open stream counts as one call against the rate limits (``edge.stream``). In-memory bus:
the limit is edge logic; the shared limit over real buses is in tests/e2e."""

from __future__ import annotations

from busgate.contracts.config import parse


async def one_step(req, responder) -> None:
    await responder.step([b"1"], last=True)


async def test_a_stream_is_one_call(edge):
    config = parse(
        {
            "gateway": {"id": "t"},
            "systems": {"demo": {"type": "rpc", "base_url": "http://127.0.0.1:9"}},
            "channels": {
                "demo": {"system": "demo", "resilience": {"ip": {"limit": 2, "period": 3600}}}
            },
        }
    )
    client, _ = await edge(config, one_step)
    statuses = []
    for _ in range(3):
        resp = await client.get("/api/stream/demo/count")
        await resp.read()
        statuses.append(resp.status)
    assert statuses == [200, 200, 429]
    assert resp.headers["RateLimit-Policy"] == '"ip-demo";q=2;w=3600'
    assert (await client.get("/api/request/demo/echo")).status == 429  # the same limit
