"""The request path end to end: client → edge → bus → adapter → runner, separate processes,
over NATS and over Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from yarl import URL

from busgate.brokers import free_port, wait_for_port
from busgate.edge.json_body import MAX_DEPTH
from tests.e2e.conftest import E2E_ENV
from tests.raw_http import exchange
from tests.stack import dev_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def blackhole() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


@pytest.fixture(scope="module", params=["nats", "kafka"])
def stack(request, blackhole):
    """The e2e dev stack, plus: client request ids accepted; channels with their own
    timeouts (``slow``: 3 s over the demo system's 1.5 s; ``hasty``: 3 s, but 0.5 s for
    ``sleep``); a system with no timeout of its own (``mute``, whose runner never answers)
    under a gateway timeout of 1 s; and system ``broken``, which points at a socket that
    listens with a header aiohttp refuses to send: calling its runner raises something that
    is neither a timeout nor a connection error."""
    request.applymarker(getattr(pytest.mark, request.param))
    env = {
        **E2E_ENV,
        "BUSGATE__SYSTEMS__BROKEN__TYPE": "rpc",
        "BUSGATE__SYSTEMS__BROKEN__TIMEOUT": "5.0",
        "BUSGATE__SYSTEMS__BROKEN__BASE_URL": f"http://127.0.0.1:{blackhole}/x",
        "BUSGATE__SYSTEMS__BROKEN__HEADERS": '{ "X-Bad" = "a\\nb" }',
        "BUSGATE__CHANNELS__BROKEN__SYSTEM": "broken",
        "BUSGATE__SYSTEMS__DOWN__BASE_URL": f"http://127.0.0.1:{free_port()}/x",
        "BUSGATE__GATEWAY__ACCEPT_REQUEST_ID": "true",
        "BUSGATE__GATEWAY__TIMEOUT": "1.0",
        "BUSGATE__CHANNELS__SLOW__SYSTEM": "demo",
        "BUSGATE__CHANNELS__SLOW__TIMEOUT": "3.0",
        "BUSGATE__CHANNELS__HASTY__SYSTEM": "demo",
        "BUSGATE__CHANNELS__HASTY__TIMEOUT": "3.0",
        "BUSGATE__CHANNELS__HASTY__PATHS__SLEEP__TIMEOUT": "0.5",
        "BUSGATE__SYSTEMS__MUTE__TYPE": "rpc",
        "BUSGATE__SYSTEMS__MUTE__BASE_URL": f"http://127.0.0.1:{blackhole}/mute",
        "BUSGATE__CHANNELS__MUTE__SYSTEM": "mute",
    }
    with dev_stack(request.param, env=env) as running:
        yield running


async def calls(http, stack) -> list[dict]:
    async with http.get(f"{stack.runner}/calls") as resp:
        return await resp.json()


async def test_echo_crosses_the_bus_and_the_runner_sees_the_clients_ids(stack, http):
    async with http.post(f"{stack.url}/api/request/demo/echo", json={"hello": "world"}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"hello": "world"}
        request_id = resp.headers["X-Request-Id"]
        trace_id = resp.headers["X-Trace-Id"]
    assert request_id.startswith("dev-")
    seen = [c for c in await calls(http, stack) if c["requestId"] == request_id]
    assert len(seen) == 1
    assert seen[0]["x-request-id"] == request_id
    assert seen[0]["traceparent"].split("-")[1] == trace_id
    assert seen[0]["parameters"] == {"hello": "world"}


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_methods_with_a_body(stack, http, method):
    async with http.request(method, f"{stack.url}/api/request/demo/meta", json={"a": 1}) as resp:
        assert resp.status == 200
        meta = await resp.json()
    assert (meta["method"], meta["channel"], meta["path"]) == (method, "demo", "meta")
    assert meta["requestId"] == resp.headers["X-Request-Id"]
    assert meta["traceId"] == resp.headers["X-Trace-Id"]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_methods_with_query_payload(stack, http, method):
    async with http.request(method, f"{stack.url}/api/request/demo/echo?x=1&y=2") as resp:
        assert resp.status == 200
        assert await resp.json() == {"x": "1", "y": "2"}


async def error_of(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    error = (await resp.json())["error"]
    assert error["requestId"] == resp.headers["X-Request-Id"]
    return error


async def test_malformed_json_is_400(stack, http):
    headers = {"Content-Type": "application/json"}
    async with http.post(f"{stack.url}/api/request/demo/echo", data=b'{"a":', headers=headers) as r:
        assert (await error_of(r, 400))["code"] == "bad_request"


async def test_unknown_channel_is_404(stack, http):
    async with http.post(f"{stack.url}/api/request/missing/echo", json={}) as resp:
        assert (await error_of(resp, 404))["code"] == "not_found"


async def test_oversized_body_is_413(stack, http):
    body = {"blob": "x" * 70_000}
    async with http.post(f"{stack.url}/api/request/demo/echo", json=body) as resp:
        assert (await error_of(resp, 413))["code"] == "payload_too_large"


async def test_unsupported_media_type_is_415(stack, http):
    headers = {"Content-Type": "application/xml"}
    async with http.post(f"{stack.url}/api/request/demo/echo", data=b"<a/>", headers=headers) as r:
        assert (await error_of(r, 415))["code"] == "unsupported_media_type"


async def test_runner_5xx_is_502(stack, http):
    async with http.post(f"{stack.url}/api/request/demo/fail", json={"status": 500}) as resp:
        assert (await error_of(resp, 502))["code"] == "upstream_error"


async def test_unreachable_runner_is_502(stack, http):
    async with http.post(f"{stack.url}/api/request/down/anything", json={}) as resp:
        assert (await error_of(resp, 502))["code"] == "upstream_unreachable"


async def test_runner_4xx_passes_through_with_its_body(stack, http):
    payload = {"status": 409, "message": "already there"}
    async with http.post(f"{stack.url}/api/request/demo/fail", json=payload) as resp:
        assert resp.status == 409
        assert await resp.json() == {"error": "already there"}


async def test_deadline_is_504_at_the_configured_timeout(stack, http):
    started = time.monotonic()
    async with http.post(f"{stack.url}/api/request/demo/sleep", json={"ms": 4000}) as resp:
        assert (await error_of(resp, 504))["code"] == "deadline_exceeded"
    assert 1.4 <= time.monotonic() - started < 3.5


@pytest.fixture
def lonely_edge(stack, tmp_path):
    """A second edge node, its own process, with a channel to a system nobody serves."""
    port = free_port()
    config = tmp_path / "edge.toml"
    config.write_text(
        f"""
[gateway]
id = "second"
bus = "{stack.parts["bus"]}"
listen = "127.0.0.1:{port}"
return_ids = "always"
[systems.lonely]
type = "rpc"
base_url = "http://127.0.0.1:9/api/lonely"
timeout = 10.0
[channels.lonely]
system = "lonely"
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSGATE__")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "busgate", "edge", "--config", str(config)], env=env
    )
    try:
        wait_for_port("127.0.0.1", port, 30, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_a_system_no_adapter_serves_is_503_fast(lonely_edge, http):
    started = time.monotonic()
    async with http.post(f"{lonely_edge}/api/request/lonely/x", json={}) as resp:
        assert (await error_of(resp, 503))["code"] == "no_adapter"
        assert resp.headers["Retry-After"]
    assert time.monotonic() - started < 1.0


async def test_a_channel_timeout_longer_than_the_systems_lets_a_slow_call_finish(stack, http):
    started = time.monotonic()
    async with http.post(f"{stack.url}/api/request/slow/sleep", json={"ms": 2000}) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"slept": 2000}
    assert time.monotonic() - started >= 2.0


async def test_a_path_timeout_shorter_than_the_channels_is_504_at_the_paths_deadline(stack, http):
    started = time.monotonic()
    async with http.post(f"{stack.url}/api/request/hasty/sleep", json={"ms": 2000}) as resp:
        assert (await error_of(resp, 504))["code"] == "deadline_exceeded"
    assert 0.45 <= time.monotonic() - started < 1.2


async def test_the_gateway_timeout_applies_when_nothing_else_is_set(stack, http):
    started = time.monotonic()
    async with http.post(f"{stack.url}/api/request/mute/anything", json={}) as resp:
        assert (await error_of(resp, 504))["code"] == "deadline_exceeded"
    assert 0.95 <= time.monotonic() - started < 1.8


async def test_two_calls_reusing_one_client_request_id_each_get_their_own_reply(stack, http):
    """Correlation never rests on the client's id: both calls are in flight at once with
    the same X-Request-Id, and each gets the answer to its own body."""
    headers = {"X-Request-Id": "same-id-twice"}

    async def sleep(ms: int) -> tuple[int, dict, str]:
        url = f"{stack.url}/api/request/demo/sleep"
        async with http.post(url, json={"ms": ms}, headers=headers) as resp:
            return resp.status, await resp.json(), resp.headers["X-Request-Id"]

    first, second = await asyncio.gather(sleep(300), sleep(600))
    assert first == (200, {"slept": 300}, "same-id-twice")
    assert second == (200, {"slept": 600}, "same-id-twice")
    seen = [c for c in await calls(http, stack) if c["requestId"] == "same-id-twice"]
    assert sorted(c["parameters"]["ms"] for c in seen) == [300, 600]
    assert {c["x-request-id"] for c in seen} == {"same-id-twice"}


async def test_an_unexpected_failure_calling_the_runner_is_500_at_once(stack, http):
    """Issue 8, correctness: the adapter's runner call raises something that is neither a
    timeout nor a connection error; the caller gets a 500 now, not a 504 at its 5 s deadline."""
    started = time.monotonic()
    async with http.post(f"{stack.url}/api/request/broken/x", json={}) as resp:
        assert (await error_of(resp, 500))["code"] == "internal"
    assert time.monotonic() - started < 2.0


async def test_json_nested_too_deeply_is_400(stack, http):
    """Issue 8, item 4: a thousand levels were a 500 (RecursionError) at the edge."""
    for body in (b"[" * 1000 + b"]" * 1000, b'{"a":' * 1000 + b"1" + b"}" * 1000):
        async with http.post(
            f"{stack.url}/api/request/demo/echo",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert (await error_of(resp, 400))["code"] == "bad_request"
    deep = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH  # as deep as allowed: crosses every hop
    async with http.post(
        f"{stack.url}/api/request/demo/echo",
        data=deep,
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 200
        assert await resp.read() == deep


async def closed_by_server(reader: asyncio.StreamReader) -> float:
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass
    return time.monotonic()


async def test_slow_clients_are_disconnected_and_others_served(stack, http):
    """Issue 8, item 7, on the edge process: heads trickled a byte at a time and stalled
    chunked bodies are cut after the configured 1 s; a normal client is served meanwhile."""
    port = URL(stack.url).port
    head = b"GET /api/request/demo/echo HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    body = (
        b"POST /api/request/demo/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n[1\r\n"
    )

    async def trickle(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            for byte in head:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)

    started = time.monotonic()  # each head's clock starts when its connection does
    slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(30)]
    stalled = [await asyncio.open_connection("127.0.0.1", port) for _ in range(15)]
    tricklers = [asyncio.create_task(trickle(w)) for _, w in slow]
    for _, w in stalled:
        w.write(body)
    closes = [asyncio.create_task(closed_by_server(r)) for r, _ in slow + stalled]
    async with http.post(f"{stack.url}/api/request/demo/echo", json={"ok": 1}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"ok": 1}
    async with asyncio.timeout(10):
        ended = await asyncio.gather(*closes)
    await asyncio.gather(*tricklers)
    for _, w in slow + stalled:
        w.close()
    assert all(0.8 <= t - started < 5 for t in ended), sorted(t - started for t in ended)


async def test_requests_aiohttp_cannot_parse_are_json_400(stack):
    """Issue 8, item 8: plain text and a traceback at ERROR before."""
    port = URL(stack.url).port
    mark = len(stack.output)
    for data in (
        b"GET /" + b"a" * 65536 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\n\n",
        b"FOO@ / HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        answer = await exchange(port, data)
        assert answer.status == 400
        assert answer.headers["content-type"] == "application/json"
        assert json.loads(answer.body)["error"]["code"] in ("line_too_long", "bad_http_message")
    logged = stack.output[mark:]
    assert not [line for line in logged if "Error handling request" in line]
    assert not [line for line in logged if "http_exceptions" in line]
