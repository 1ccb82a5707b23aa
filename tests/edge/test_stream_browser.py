"""A real browser on ``/api/stream``: headless Chromium's EventSource receives the steps in
order, and resumes after its last event id when the server closes the stream mid-way.

The page is served by the edge app itself (a route added for this test only), so the stream
is same-origin. The edge runs in the test process on a real port, over a real nats-server, the
adapter on the bus and the sample runner as its own process.
"""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest
from aiohttp import web

from busgate.brokers import free_port
from busgate.edge import keys
from busgate.edge.app import create_app
from tests.edge.chromium import chromium, ensure_chromium

pytestmark = pytest.mark.nats

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>busgate stream</title>
<script>
  const send = (what) => report(JSON.stringify(what));
  const source = new EventSource(%(url)s);
  source.onopen = () => send({type: "open"});
  source.onmessage = (e) => send({type: "message", data: e.data, lastEventId: e.lastEventId});
  source.addEventListener("end", () => { send({type: "end"}); source.close(); });
  source.addEventListener("error", (e) =>
    send({type: e.data ? "error-event" : "error", data: e.data || null,
          state: source.readyState}));
</script>
"""


@pytest.fixture(scope="session")
def chromium_binary() -> str:
    """Debian's chromium, installed on first use when missing (as root)."""
    return ensure_chromium()


@pytest.fixture
async def edge_with_page(stream_stack):
    app = create_app(stream_stack.config())
    run = uuid.uuid4().hex
    stream = f"/api/stream/demo/count?to=8&batch=2&wait=300&run={run}"

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE % {"url": f'"{stream}"'}, content_type="text/html")

    app.router.add_get("/test/stream.html", page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield app, f"http://127.0.0.1:{port}/test/stream.html", run
    finally:
        await runner.cleanup()


async def test_eventsource_gets_every_step_in_order_and_resumes_after_a_cut(
    chromium_binary, edge_with_page, stream_stack
):
    app, page_url, run = edge_with_page
    reports: list[dict] = []
    async with chromium(chromium_binary) as page:
        await page.send("Page.navigate", url=page_url)
        async with asyncio.timeout(60):
            cut = False
            while not reports or reports[-1]["type"] != "end":
                reports.append(await page.report())
                last = reports[-1]
                if not cut and last["type"] == "message" and last["data"] == "4":
                    # The server closes the stream mid-way, without `end` (a shutdown does).
                    assert app[keys.STREAMS].stop_all() == 1
                    cut = True

    kinds = [r["type"] for r in reports]
    assert kinds.count("open") == 2, reports
    assert "error-event" not in kinds
    messages = [r for r in reports if r["type"] == "message"]
    assert [m["data"] for m in messages] == [str(n) for n in range(1, 9)]
    reconnect = kinds.index("open", 1)
    before = [r for r in reports[:reconnect] if r["type"] == "message"]
    resumed_from = before[-1]["lastEventId"]
    assert resumed_from in ("4", "6")  # the cut may come after step (5, 6) was written

    async with aiohttp.ClientSession() as http, http.get(f"{stream_stack.runner}/calls") as r:
        # The runner is the session's, shared with other tests: their parameters may be
        # anything (a list), ours are a dict with our run id.
        ours = [c for c in await r.json() if isinstance(c["parameters"], dict)]
        ours = [c for c in ours if c["parameters"].get("run") == run]
    request_ids = list(dict.fromkeys(c["requestId"] for c in ours))
    assert len(request_ids) == 2
    second = [c for c in ours if c["requestId"] == request_ids[1]]
    assert second[0]["parameters"]["previous"] == resumed_from
