"""The RPC adapter against the real sample runner over HTTP."""

from __future__ import annotations

import time

import pytest
from aiohttp.test_utils import TestServer

from busgate.adapters.rpc.client import RpcClient
from busgate.brokers import free_port
from busgate.contracts import errors
from busgate.contracts.codec import json_decode
from busgate.contracts.config import Gateway, RpcSystem
from busgate.contracts.wire import Identity, Request
from busgate.runners.rpc import CALLS, create_app

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
async def runner():
    app = create_app()
    server = TestServer(app)
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def client(runner):
    system = RpcSystem(base_url=str(runner.make_url("/api/demo")), timeout=2.0)
    rpc = RpcClient("demo", system, Gateway())
    yield rpc
    await rpc.close()


def request(path: str, body: bytes = b"{}", **kw) -> Request:
    return Request(
        id="gw-x-1",
        traceparent=TRACEPARENT,
        channel="demo",
        system="demo",
        path=path,
        body=body,
        deadline=kw.pop("deadline", time.time() + 5),
        **kw,
    )


async def test_payload_is_wrapped_as_parameters_byte_for_byte(client, runner):
    reply = await client.call(request("echo", b'{"a": [1, 2]}'))
    assert reply.status == 200
    assert json_decode(reply.body) == {"a": [1, 2]}
    assert reply.headers["content-type"].startswith("application/json")


async def test_runner_gets_meta_ids_and_identity(client, runner):
    identity = Identity(subject="demo", roles=("user",), session_id="s1")
    reply = await client.call(request("meta", identity=identity, method="PUT"))
    meta = json_decode(reply.body)
    assert meta == {
        "requestId": "gw-x-1",
        "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
        "channel": "demo",
        "path": "meta",
        "method": "PUT",
        "identity": {"subject": "demo", "roles": ["user"], "session_id": "s1"},
        "traceparent": TRACEPARENT,  # the sample runner echoes the header it got
    }
    (call,) = runner.app[CALLS]
    assert call["x-request-id"] == "gw-x-1"
    assert call["traceparent"] == TRACEPARENT


async def test_a_posts_query_string_reaches_the_runner_in_meta(client, runner):
    reply = await client.call(request("meta", method="POST", query={"page": "2", "q": "a b"}))
    assert json_decode(reply.body)["query"] == {"page": "2", "q": "a b"}
    plain = json_decode((await client.call(request("meta", method="POST"))).body)
    assert "query" not in plain


async def test_the_sample_sleep_takes_ms_from_the_query_when_the_body_has_none(client):
    from_query = await client.call(request("sleep", method="POST", query={"ms": "5"}))
    from_body = await client.call(request("sleep", b'{"ms": 7}', query={"ms": "5"}))
    assert json_decode(from_query.body) == {"slept": 5}
    assert json_decode(from_body.body) == {"slept": 7}
    bad = await client.call(request("sleep", method="POST", query={"ms": "soon"}))
    assert bad.status == 400 and b"'ms' must be an integer" in bad.body


async def test_runner_5xx_is_an_upstream_error(client):
    with pytest.raises(errors.UpstreamError, match="503"):
        await client.call(request("fail", b'{"status": 503}'))


async def test_runner_4xx_is_a_reply_not_an_error(client):
    reply = await client.call(request("fail", b'{"status": 422, "message": "no"}'))
    assert (reply.status, json_decode(reply.body)) == (422, {"error": "no"})


async def test_slow_runner_is_cut_at_the_deadline(client):
    started = time.monotonic()
    with pytest.raises(errors.DeadlineExceeded):
        await client.call(request("sleep", b'{"ms": 3000}', deadline=time.time() + 0.3))
    assert time.monotonic() - started < 1.5


async def test_no_work_starts_past_the_deadline(client, runner):
    with pytest.raises(errors.DeadlineExceeded):
        await client.call(request("echo", deadline=time.time() - 1))
    assert len(runner.app[CALLS]) == 0


async def test_unreachable_runner_is_502():
    system = RpcSystem(base_url=f"http://127.0.0.1:{free_port()}/api/demo", timeout=2.0)
    rpc = RpcClient("demo", system, Gateway())
    try:
        with pytest.raises(errors.UpstreamUnreachable):
            await rpc.call(request("echo"))
    finally:
        await rpc.close()


async def test_connections_are_reused(client, runner):
    for _ in range(5):
        await client.call(request("echo"))
    peers = {tuple(call["peer"]) for call in runner.app[CALLS]}
    assert len(peers) == 1, "every call should reuse one keep-alive connection"


@pytest.mark.parametrize("path", ["a?b", "a#b", "café/ü", "50%off", "a b"])
async def test_the_runner_gets_the_path_the_edge_checked(client, runner, path):
    """The runner decodes the URL once and names the saga it got: exactly the envelope's
    path (a '?' is no query, a '#' no fragment, a '%' no escape)."""
    reply = await client.call(request(path))
    assert reply.status == 404
    assert json_decode(reply.body)["error"] == f"no saga {path!r}"
    (call,) = runner.app[CALLS]
    assert call["saga"] == path


@pytest.mark.parametrize(
    "path",
    ["x/%2e%2e/admin/meta", "x/../admin/meta", "x/%2E./meta", "x/./meta", "a\\..\\b", "x/a%2Fb"],
)
async def test_a_path_that_could_be_normalised_is_refused_before_the_runner(client, runner, path):
    """An envelope from any producer gets the edge's path rule again: no dot segments, no
    leftover escapes, so yarl or the runner cannot turn it into admin/meta."""
    with pytest.raises(errors.BadRequest):
        await client.call(request(path))
    assert len(runner.app[CALLS]) == 0


async def test_an_unexpected_failure_is_an_internal_error_at_once(runner, caplog):
    """Not a timeout, not a connection error (aiohttp refuses the configured header): a
    BusgateError (500) for the caller now, logged with its stack here."""
    system = RpcSystem(
        base_url=str(runner.make_url("/api/demo")), timeout=5.0, headers={"X-Bad": "a\nb"}
    )
    rpc = RpcClient("demo", system, Gateway())
    started = time.monotonic()
    try:
        with pytest.raises(errors.BusgateError) as raised:
            await rpc.call(request("echo"))
    finally:
        await rpc.close()
    assert time.monotonic() - started < 1.0
    assert (raised.value.status, raised.value.code) == (500, "internal")
    assert "calling the runner" in caplog.text
