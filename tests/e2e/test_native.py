"""Bus-native systems end to end: client → edge → bus → FastStream runner (no adapter), all
separate processes (``busgate dev`` starts ``busgate runner native``), over NATS and Kafka."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from busgate.brokers import free_port
from tests.e2e.conftest import E2E_ENV
from tests.sse_client import events
from tests.stack import DevStack, dev_stack

pytestmark = pytest.mark.e2e

JSON = {"Content-Type": "application/json"}
NATIVE_ENV = {
    **E2E_ENV,
    "BUSGATE__SYSTEMS__NATIVE__TIMEOUT": "1.0",
    # Bus-native systems whose runners are not running (gone), or run by the test (solo).
    "BUSGATE__SYSTEMS__GONE__TYPE": "bus",
    "BUSGATE__CHANNELS__GONE__SYSTEM": "gone",
    "BUSGATE__SYSTEMS__SOLO__TYPE": "bus",
    "BUSGATE__SYSTEMS__SOLO__TIMEOUT": "5.0",
    "BUSGATE__CHANNELS__SOLO__SYSTEM": "solo",
}


@pytest.fixture(scope="module", params=["nats", "kafka"])
def stack(request):
    request.applymarker(getattr(pytest.mark, request.param))
    env = {**NATIVE_ENV, "BUSGATE__SYSTEMS__DOWN__BASE_URL": f"http://127.0.0.1:{free_port()}/x"}
    with dev_stack(request.param, env=env) as running:
        yield running


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: aiohttp.ClientSession, url: str, body: object) -> tuple[int, object]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def test_request_reaches_the_runner_without_an_adapter(stack: DevStack, http) -> None:
    status, body = await call(http, f"{stack.url}/api/request/native/echo", {"a": [1, "x"]})
    assert (status, body) == (200, {"a": [1, "x"]})
    async with http.post(f"{stack.url}/api/request/native/meta", json={}) as resp:
        meta = await resp.json()
        assert meta["system"] == "native" and meta["path"] == "meta"
        assert meta["requestId"] == resp.headers["X-Request-Id"]
    async with http.get(f"{stack.url}/readyz") as resp:
        assert (await resp.json())["systems"]["native"], "the runner announces presence"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [({"kind": "bad"}, 400, "bad_request"), ({"kind": "conflict"}, 409, "conflict")],
)
async def test_runner_errors_keep_their_status(stack, http, body, status, code) -> None:
    got, answer = await call(http, f"{stack.url}/api/request/native/fail", body)
    assert got == status
    assert answer["error"]["code"] == code
    assert answer["error"]["requestId"]


async def test_a_crashing_saga_is_a_json_500_without_internals(stack, http) -> None:
    status, answer = await call(http, f"{stack.url}/api/request/native/fail", {"kind": "crash"})
    assert status == 500
    assert "on purpose" not in str(answer) and "Traceback" not in str(answer)
    assert set(answer["error"]) == {"code", "message", "requestId"}


async def test_unknown_saga_is_404_and_bad_json_400(stack, http) -> None:
    status, answer = await call(http, f"{stack.url}/api/request/native/nope", {})
    assert status == 404 and answer["error"]["code"] == "not_found"


async def test_deadline_is_504_and_the_runner_stops_the_saga(stack, http) -> None:
    started = time.monotonic()
    status, answer = await call(http, f"{stack.url}/api/request/native/sleep", {"seconds": 8})
    assert status == 504, answer
    assert time.monotonic() - started < 3.0
    # The runner gave up at the deadline too, not after the saga's 8 s.
    while await inflight(http, stack) != 0:
        assert time.monotonic() - started < 4.0, "the runner still runs a saga past its deadline"
        await asyncio.sleep(0.05)


async def test_stream_steps_in_order(stack, http) -> None:
    url = f"{stack.url}/api/stream/native/count"
    async with http.post(url, json={"to": 4}) as resp:
        assert resp.status == 200
        got = [e async for e in events(resp) if e.kind != "comment"]
    assert [e.data for e in got[:4]] == [f'{{"n":{n}}}' for n in range(1, 5)]
    assert got[-1].kind == "end"


async def test_stream_error_ends_the_stream(stack, http) -> None:
    async with http.post(f"{stack.url}/api/stream/native/nope", json={}) as resp:
        body = await resp.text()
    assert "not_found" in body


async def inflight(http: aiohttp.ClientSession, stack: DevStack) -> int:
    """Calls the runner holds, not counting the one that asks."""
    _, body = await call(http, f"{stack.url}/api/request/native/inflight", {})
    assert isinstance(body, dict)
    return int(body["inflight"]) - 1


async def test_a_client_that_goes_away_cancels_the_runners_stream(stack, http) -> None:
    """An endless stream; the client reads two steps and leaves. The runner must let go of
    the stream (Cancel): without it, it would wait for credits that never come."""
    assert await inflight(http, stack) == 0
    url = f"{stack.url}/api/stream/native/count"
    async with http.post(url, json={"to": 0, "wait": 0.05}) as resp:
        seen = 0
        async for event in events(resp):
            seen += event.kind == "message"
            if seen == 2:
                break
        assert await inflight(http, stack) == 1
    end = time.monotonic() + 10
    while await inflight(http, stack) != 0:
        assert time.monotonic() < end, "the runner still holds the cancelled stream"
        await asyncio.sleep(0.05)


async def test_a_system_without_a_runner_is_503_at_once(stack, http) -> None:
    started = time.monotonic()
    status, answer = await call(http, f"{stack.url}/api/request/gone/echo", {})
    assert status == 503 and answer["error"]["code"] == "no_adapter"
    assert time.monotonic() - started < 1.0


def start_runner(stack: DevStack, system: str) -> subprocess.Popen[bytes]:
    args = ["-m", "busgate", "runner", "native", "--bus", stack.parts["bus"], "--system", system]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSGATE")}
    return subprocess.Popen([sys.executable, *args], env=env)


async def until_served(http: aiohttp.ClientSession, stack: DevStack, system: str, on: bool):
    end = time.monotonic() + 60
    while True:
        async with http.get(f"{stack.url}/readyz") as resp:
            if bool((await resp.json())["systems"][system]) == on:
                return
        assert time.monotonic() < end, f"system {system} served: never {on}"
        await asyncio.sleep(0.1)


async def test_sigterm_drains_then_the_system_is_503(stack, http) -> None:
    """A runner stopped by SIGTERM answers the call it holds, says goodbye (503 at once
    after), and exits cleanly."""
    runner = start_runner(stack, "solo")
    try:
        await until_served(http, stack, "solo", True)
        status, _ = await call(http, f"{stack.url}/api/request/solo/echo", {})
        assert status == 200
        held = asyncio.ensure_future(
            call(http, f"{stack.url}/api/request/solo/sleep", {"seconds": 1.0})
        )
        while True:  # until the runner holds the sleep (it counts itself too)
            assert not held.done()
            _, body = await call(http, f"{stack.url}/api/request/solo/inflight", {})
            assert isinstance(body, dict)
            if body["inflight"] >= 2:
                break
            await asyncio.sleep(0.02)
        runner.send_signal(signal.SIGTERM)
        assert await held == (200, {"slept": 1.0})
        assert await asyncio.to_thread(runner.wait, 20) == 0
        started = time.monotonic()
        status, answer = await call(http, f"{stack.url}/api/request/solo/echo", {})
        assert status == 503, answer
        assert time.monotonic() - started < 1.0
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()


async def test_the_edge_serves_the_asyncapi_document(stack, http) -> None:
    async with http.get(f"{stack.url}/api/asyncapi.json") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        doc = await resp.json()
    assert {"busgate.req.native", "busgate.req.demo", "busgate.control"} <= set(doc["channels"])
    protocol = doc["servers"]["development"]["protocol"]
    assert protocol == stack.bus


async def test_async_backend_is_202_once_the_runner_has_it(stack, http) -> None:
    """``X-Async: backend``: the runner answers 202 before it runs the saga, then runs it."""
    url = f"{stack.url}/api/request/native/sleep"
    headers = {"X-Async": "backend"}
    async with http.post(url, json={"seconds": 1.0}, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        assert (await resp.json())["requestId"]
    assert await inflight(http, stack) == 1, "the saga runs after the 202"
    end = time.monotonic() + 10
    while await inflight(http, stack) != 0:
        assert time.monotonic() < end
        await asyncio.sleep(0.05)
