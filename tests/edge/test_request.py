"""The /api/request path on an in-memory bus: envelopes, ids and every error mapping."""

import asyncio
import json

from busgate.bus.base import Responder
from busgate.contracts.codec import decode
from busgate.contracts.errors import UpstreamError
from busgate.contracts.wire import Reply, Request
from tests.edge.conftest import make_config


def sent_requests(bus) -> list[Request]:
    return [m for _, data, _ in bus.sent if isinstance(m := decode(data), Request)]


async def error_of(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"]["requestId"] == resp.headers["X-Request-Id"]
    return body["error"]


async def test_post_body_crosses_the_bus_byte_for_byte(edge):
    client, bus = await edge()
    raw = b'{"hello":   "world" }'
    resp = await client.post(
        "/api/request/demo/echo", data=raw, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 200
    assert await resp.read() == raw
    (req,) = sent_requests(bus)
    assert (req.channel, req.system, req.path, req.method) == ("demo", "demo", "echo", "POST")
    assert req.id == resp.headers["X-Request-Id"]
    assert req.traceparent.split("-")[1] == resp.headers["X-Trace-Id"]
    assert req.origin.client_ip == "127.0.0.1"
    assert req.deadline > 0


async def test_get_and_delete_take_the_payload_from_the_query(edge):
    client, _ = await edge()
    for method in ("GET", "DELETE"):
        resp = await client.request(method, "/api/request/demo/echo?a=1&b=2&b=3")
        assert await resp.json() == {"a": "1", "b": ["2", "3"]}


async def test_put_and_patch_are_forwarded(edge):
    client, bus = await edge()
    for method in ("PUT", "PATCH"):
        resp = await client.request(method, "/api/request/demo/x/y", json={"m": method})
        assert await resp.json() == {"m": method}
    assert [r.path for r in sent_requests(bus)] == ["x/y", "x/y"]


async def test_unknown_channel_is_404(edge):
    client, bus = await edge()
    error = await error_of(await client.post("/api/request/nope/echo", json={}), 404)
    assert error["code"] == "not_found" and "nope" in error["message"]
    assert sent_requests(bus) == []


async def test_method_not_on_channel_is_405(edge):
    client, _ = await edge()
    await error_of(await client.post("/api/request/readonly/echo", json={}), 405)


async def test_unknown_route_is_json_404(edge):
    client, _ = await edge()
    await error_of(await client.get("/no/such/thing"), 404)


async def test_malformed_json_is_400(edge):
    client, bus = await edge()
    resp = await client.post(
        "/api/request/demo/echo", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    error = await error_of(resp, 400)
    assert "malformed JSON" in error["message"]
    assert sent_requests(bus) == []


async def test_unsupported_media_type_is_415(edge):
    client, _ = await edge()
    resp = await client.post(
        "/api/request/demo/echo", data=b"a=1", headers={"Content-Type": "text/plain"}
    )
    await error_of(resp, 415)


async def test_body_over_the_limit_is_413_with_or_without_length(edge):
    client, bus = await edge(make_config(return_ids="always", max_body=1000))
    big = b'{"x":"' + b"a" * 2000 + b'"}'
    resp = await client.post(
        "/api/request/demo/echo", data=big, headers={"Content-Type": "application/json"}
    )
    await error_of(resp, 413)

    async def chunks():
        yield big[:500]
        yield big[500:]

    resp = await client.post(
        "/api/request/demo/echo", data=chunks(), headers={"Content-Type": "application/json"}
    )
    await error_of(resp, 413)
    assert sent_requests(bus) == []


async def test_no_adapter_is_503_with_retry_after(edge):
    client, _ = await edge()
    resp = await client.post("/api/request/idle/echo", json={})
    error = await error_of(resp, 503)
    assert error["code"] == "no_adapter"
    assert resp.headers["Retry-After"] == "30"


async def test_bus_down_is_503(edge):
    client, bus = await edge()
    bus.up = False
    error = await error_of(await client.post("/api/request/demo/echo", json={}), 503)
    assert error["code"] == "bus_unavailable"


async def test_no_reply_before_the_deadline_is_504(edge):
    never = asyncio.Event()

    async def silent(req: Request, responder: Responder) -> None:
        await never.wait()

    client, _ = await edge(make_config(return_ids="always"), silent)
    config_timeout = 2.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    error = await error_of(await client.post("/api/request/demo/echo", json={}), 504)
    assert error["code"] == "deadline_exceeded"
    assert config_timeout - 0.1 <= loop.time() - started < config_timeout + 1
    never.set()


async def test_adapter_error_keeps_its_status_and_code(edge):
    async def failing(req: Request, responder: Responder) -> None:
        err = UpstreamError("runner answered 500").to_wire()
        await responder.reply(Reply(id=req.id, status=502, error=err))

    client, _ = await edge(make_config(return_ids="always"), failing)
    error = await error_of(await client.post("/api/request/demo/echo", json={}), 502)
    assert error == {
        "code": "upstream_error",
        "message": "runner answered 500",
        "requestId": error["requestId"],
    }


async def test_runner_4xx_passes_through_with_its_body(edge):
    async def teapot(req: Request, responder: Responder) -> None:
        await responder.reply(
            Reply(
                id=req.id,
                status=418,
                body=b'{"why":"short and stout"}',
                headers={"content-type": "application/json"},
            )
        )

    client, _ = await edge(make_config(return_ids="always"), teapot)
    resp = await client.post("/api/request/demo/echo", json={})
    assert resp.status == 418
    assert await resp.json() == {"why": "short and stout"}


async def test_ids_are_returned_only_as_configured(edge):
    client, _ = await edge(make_config(return_ids="none"))
    resp = await client.post("/api/request/demo/echo", json={})
    assert "X-Request-Id" not in resp.headers and "X-Trace-Id" not in resp.headers

    client, _ = await edge(make_config(return_ids="error"))
    ok = await client.post("/api/request/demo/echo", json={})
    bad = await client.post("/api/request/nope/echo", json={})
    assert "X-Request-Id" not in ok.headers
    assert bad.headers["X-Request-Id"] == json.loads(await bad.text())["error"]["requestId"]


async def test_client_ids_and_trace_are_ignored_unless_allowed(edge):
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers = {"X-Request-Id": "mine-1", "traceparent": incoming}
    client, _ = await edge()
    resp = await client.post("/api/request/demo/echo", json={}, headers=headers)
    assert resp.headers["X-Request-Id"] != "mine-1"
    assert resp.headers["X-Trace-Id"] != "4bf92f3577b34da6a3ce929d0e0e4736"

    client, _ = await edge(
        make_config(return_ids="always", accept_request_id=True, accept_trace=True)
    )
    resp = await client.post("/api/request/demo/echo", json={}, headers=headers)
    assert resp.headers["X-Request-Id"] == "mine-1"
    assert resp.headers["X-Trace-Id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_configured_header_names_are_used(edge):
    client, _ = await edge(
        make_config(return_ids="always", request_id_header="Req", trace_id_header="Trc")
    )
    resp = await client.post("/api/request/demo/echo", json={})
    assert resp.headers["Req"].startswith("t-") and len(resp.headers["Trc"]) == 32


async def test_health_and_readiness(edge):
    client, bus = await edge()
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["bus"] == "connected"
    bus.up = False
    assert (await client.get("/readyz")).status == 503


async def test_the_server_header_names_no_versions(edge):
    client, _ = await edge()
    for resp in (
        await client.post("/api/request/demo/echo", json={}),
        await client.post("/api/request/nope/echo", json={}),  # an error, too
        await client.get("/healthz"),
    ):
        assert resp.headers["Server"] == "busgate"


async def test_a_client_request_id_never_becomes_the_correlation_id(edge):
    client, bus = await edge(make_config(return_ids="always", accept_request_id=True))
    for _ in range(2):
        resp = await client.post("/api/request/demo/echo", json={}, headers={"X-Request-Id": "x"})
        assert resp.headers["X-Request-Id"] == "x"
    first, second = sent_requests(bus)
    assert first.client_id == second.client_id == first.shown_id == "x"
    assert len({first.id, second.id, "x"}) == 3
