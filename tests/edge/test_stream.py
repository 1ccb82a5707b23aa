"""``/api/stream`` against real parts: an edge app on a real port, a real nats-server, an adapter
on the bus and the sample runner as its own process (see ``stream_stack``)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
import pytest

from tests.sse_client import collect, events

pytestmark = pytest.mark.nats


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def url(server, path: str) -> str:
    return str(server.make_url(path))


async def test_steps_become_events_with_the_cursor_as_id_then_end(edge_server, http):
    server = await edge_server()
    async with http.get(url(server, "/api/stream/demo/count?to=5&batch=2&wait=20")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Request-Id"]
        got = await collect(resp)
    assert [(e.kind, e.data, e.id) for e in got] == [
        ("message", "1", None),
        ("message", "2", "2"),
        ("message", "3", None),
        ("message", "4", "4"),
        ("message", "5", "5"),
        ("end", "{}", None),
    ]


async def test_the_first_event_arrives_before_the_runner_is_asked_for_the_next(
    edge_server, http, stream_stack
):
    """Streamed, not buffered: each step reaches the client before the saga's next call."""
    server = await edge_server()
    async with http.get(url(server, "/api/stream/demo/count?to=3&wait=200")) as resp:
        got = await collect(resp)
    assert [(e.data, e.id) for e in got] == [("1", "1"), ("2", "2"), ("3", "3"), ("{}", None)]
    calls = await stream_stack.calls(resp.headers["X-Request-Id"])
    # Both clocks are CLOCK_MONOTONIC, system-wide on Linux.
    assert got[0].at < calls[1]["at"]
    assert got[1].at < calls[2]["at"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_a_json_body_carries_the_parameters(edge_server, http, stream_stack, method):
    server = await edge_server()
    body = {"from": 3, "to": 4, "batch": 5}
    async with http.request(method, url(server, "/api/stream/demo/count"), json=body) as resp:
        assert resp.status == 200
        got = await collect(resp)
    assert [e.data for e in got] == ["3", "4", "{}"]
    (call,) = await stream_stack.calls(resp.headers["X-Request-Id"])
    assert call["parameters"] == body


async def test_last_event_id_resumes_after_that_step(edge_server, http, stream_stack):
    server = await edge_server()
    stream = url(server, "/api/stream/demo/count?to=5&batch=2&wait=0")
    async with http.get(stream, headers={"Last-Event-ID": "2"}) as resp:
        got = await collect(resp)
    assert [e.data for e in got] == ["3", "4", "5", "{}"]
    calls = await stream_stack.calls(resp.headers["X-Request-Id"])
    assert calls[0]["parameters"]["previous"] == "2"


async def error_of(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    error = (await resp.json())["error"]
    assert error["requestId"] == resp.headers["X-Request-Id"]
    return error


async def test_failures_before_the_first_step_are_json_errors(edge_server, http):
    server = await edge_server()
    async with http.get(url(server, "/api/stream/missing/count")) as resp:
        assert (await error_of(resp, 404))["code"] == "not_found"
    async with http.post(url(server, "/api/stream/readonly/count"), json={}) as resp:
        assert (await error_of(resp, 405))["code"] == "method_not_allowed"
    headers = {"Content-Type": "application/json"}
    async with http.post(url(server, "/api/stream/demo/count"), data=b"{", headers=headers) as r:
        assert (await error_of(r, 400))["code"] == "bad_request"
    async with http.get(url(server, "/api/stream/idle/count")) as resp:  # no adapter serves it
        assert (await error_of(resp, 503))["code"] == "no_adapter"
    async with http.get(url(server, "/api/stream/demo/count?to=many")) as resp:
        assert (await error_of(resp, 400))["code"] == "runner_refused"
    async with http.get(url(server, "/api/stream/demo/count?fail_at=1")) as resp:
        assert (await error_of(resp, 502))["code"] == "upstream_error"


async def test_a_failure_mid_stream_is_an_error_event_then_the_end(edge_server, http):
    server = await edge_server()
    stream = url(server, "/api/stream/demo/count?to=9&batch=2&wait=0&fail_at=3")
    async with http.get(stream) as resp:
        assert resp.status == 200
        got = await collect(resp)
        request_id = resp.headers["X-Request-Id"]
    assert [e.data for e in got[:2]] == ["1", "2"]
    assert len(got) == 3
    assert got[2].kind == "error"
    error = json.loads(got[2].data)["error"]
    assert error["code"] == "upstream_error"
    assert "500" in error["message"]
    assert error["requestId"] == request_id


async def test_a_runner_5xx_body_is_not_shown_to_the_client(edge_server, http):
    """As on /api/request: the runner's 5xx body may hold internals; only the adapter logs it."""
    server = await edge_server()
    mid_stream = url(server, "/api/stream/demo/count?to=9&wait=0&fail_at=2")
    async with http.get(mid_stream) as resp:
        got = await collect(resp)
    assert [e.kind for e in got] == ["message", "error"]
    error = json.loads(got[1].data)["error"]
    assert error["message"] == "runner of system 'demo' answered 500"
    assert "on purpose" not in got[1].data
    first = url(server, "/api/stream/demo/fail?status=503&message=token%3Ds3cr3t")
    async with http.get(first) as resp:
        error = await error_of(resp, 502)
    assert error["message"] == "runner of system 'demo' answered 503"


async def test_a_disconnect_cancels_the_saga_before_its_next_call(edge_server, http, stream_stack):
    server = await edge_server()
    # The pause is long so that only the Cancel can end it early.
    resp = await http.get(url(server, "/api/stream/demo/count?to=9&wait=60000"))
    request_id = resp.headers["X-Request-Id"]
    assert (await anext(events(resp))).data == "1"
    resp.close()  # drops the connection
    await stream_stack.finished(request_id)
    assert len(await stream_stack.calls(request_id)) == 1


async def test_comments_keep_an_idle_stream_open(edge_server, http):
    server = await edge_server(stream_heartbeat=0.05)
    async with http.get(url(server, "/api/stream/demo/count?to=9&wait=60000")) as resp:
        seen = []
        async for event in events(resp):
            seen.append(event.kind)
            if seen.count("comment") == 2:
                break
    assert seen[0] == "message"
    assert seen[1:] == ["comment", "comment"]


async def test_the_node_limit_refuses_with_429_and_retry_after(edge_server, http):
    server = await edge_server(max_streams=1)
    async with http.get(url(server, "/api/stream/demo/count?to=9&wait=60000")) as first:
        await anext(events(first))
        async with http.get(url(server, "/api/stream/demo/count")) as second:
            assert (await error_of(second, 429))["code"] == "rate_limited"
            assert int(second.headers["Retry-After"]) > 0
        async with http.get(url(server, "/api/request/demo/echo")) as call:
            assert call.status == 200  # plain calls are not limited by it


async def test_the_per_client_limit_counts_one_clients_streams(edge_server, http):
    server = await edge_server(max_streams=10, max_streams_per_client=2)
    stream = url(server, "/api/stream/demo/count?to=9&wait=60000")
    async with http.get(stream) as one, http.get(stream) as two:
        await anext(events(one))
        await anext(events(two))
        async with http.get(stream) as three:
            assert (await error_of(three, 429))["code"] == "rate_limited"
            assert "client" in (await three.json())["error"]["message"]


async def test_max_duration_ends_the_stream_with_an_error_event(edge_server, http):
    server = await edge_server(max_stream_duration=0.3)
    async with http.get(url(server, "/api/stream/demo/count?to=9&wait=60000")) as resp:
        got = await collect(resp)
    assert [e.kind for e in got] == ["message", "error"]
    error = json.loads(got[1].data)["error"]
    assert error["code"] == "deadline_exceeded"
    assert "maximum duration" in error["message"]


async def test_shutdown_closes_open_streams_and_cancels_their_sagas(
    edge_server, http, stream_stack
):
    server = await edge_server()
    async with http.get(url(server, "/api/stream/demo/count?to=9&wait=60000")) as resp:
        request_id = resp.headers["X-Request-Id"]
        reading = events(resp)
        assert (await anext(reading)).data == "1"
        closing = asyncio.ensure_future(server.close())
        rest = [e async for e in reading]
    await closing
    assert [e.kind for e in rest] == ["comment"]  # no `end`: an EventSource reconnects
    await stream_stack.finished(request_id)
    assert len(await stream_stack.calls(request_id)) == 1


async def test_a_slow_client_that_keeps_reading_is_not_dropped(edge_server, stream_stack):
    """The stall timeout is for a client that takes nothing, not for one whose single write
    takes longer than it. Once the socket's buffers are full (a few MB), each 500 KB step
    takes this client about half a second to read."""
    server = await edge_server(stream_stall_timeout=0.2)
    step, steps = 500_000, 8
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((server.host, server.port))
    path = f"/api/stream/demo/bulk?size={step}&to={steps}&wait=0"
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())

    def read_slowly() -> bytes:
        got = bytearray()
        while chunk := sock.recv(4096):
            got += chunk
            time.sleep(0.004)  # the client's pace: at most about 1 MB/s
        return bytes(got)

    try:
        received = await asyncio.to_thread(read_slowly)
    finally:
        sock.close()
    assert received.count(b'\ndata: "xxx') == steps
    assert received.endswith(b"event: end\ndata: {}\n\n\r\n0\r\n\r\n")  # chunked framing
