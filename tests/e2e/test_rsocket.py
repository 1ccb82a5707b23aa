"""RSocket systems end to end: client → edge → bus → adapter → the sample RSocket runner,
separate processes (``busgate dev``'s ``rsocket`` channel), over NATS and over Kafka; and a
runner of our own that is killed and restarted (reconnect)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from busgate.brokers import free_port, wait_for_port
from tests.e2e.conftest import E2E_ENV
from tests.sse_client import collect, events
from tests.stack import dev_stack

pytestmark = pytest.mark.e2e

OWN_PORT = free_port()
"""Where the test's own runner listens (system ``rsown``); chosen once, so that the adapter
reconnects to the same address after a restart."""


def rsocket_runner(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "busgate", "runner", "rsocket", "--listen", f"127.0.0.1:{port}"]
    )
    wait_for_port("127.0.0.1", port, 30, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module", params=["nats", "kafka"])
def stack(request) -> Iterator:
    """The dev stack with a 1.5 s timeout on the rsocket system, plus ``rsdown`` (nobody
    listens) and ``rsown`` (two hosts: the test's own runner, and one that is down)."""
    request.applymarker(getattr(pytest.mark, request.param))
    env = {
        **E2E_ENV,
        "BUSGATE__SYSTEMS__DOWN__BASE_URL": f"http://127.0.0.1:{free_port()}/x",
        "BUSGATE__SYSTEMS__RSOCKET__TIMEOUT": "1.5",
        "BUSGATE__SYSTEMS__RSDOWN__TYPE": "rsocket",
        "BUSGATE__SYSTEMS__RSDOWN__HOSTS": f'["127.0.0.1:{free_port()}"]',
        "BUSGATE__SYSTEMS__RSDOWN__TIMEOUT": "5.0",
        "BUSGATE__CHANNELS__RSDOWN__SYSTEM": "rsdown",
        "BUSGATE__SYSTEMS__RSOWN__TYPE": "rsocket",
        "BUSGATE__SYSTEMS__RSOWN__HOSTS": f'["127.0.0.1:{OWN_PORT}", "127.0.0.1:{free_port()}"]',
        "BUSGATE__SYSTEMS__RSOWN__RETRY_DURATION": "0.2",
        "BUSGATE__SYSTEMS__RSOWN__TIMEOUT": "3.0",
        "BUSGATE__CHANNELS__RSOWN__SYSTEM": "rsown",
    }
    with dev_stack(request.param, env=env) as running:
        yield running


async def runner_calls(http, stack, channel: str = "rsocket") -> list[dict]:
    async with http.post(f"{stack.url}/api/request/{channel}/calls", json={}) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_request_response_with_the_ids_in_metadata(stack, http):
    async with http.post(f"{stack.url}/api/request/rsocket/echo", json={"a": [1, 2]}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"a": [1, 2]}
        request_id = resp.headers["X-Request-Id"]
        trace_id = resp.headers["X-Trace-Id"]
    [call] = [c for c in await runner_calls(http, stack) if c["requestId"] == request_id]
    assert call["route"] == "echo"
    assert call["traceparent"].split("-")[1] == trace_id


async def test_a_runners_4xx_passes_through_and_a_5xx_hides_its_message(stack, http):
    url = f"{stack.url}/api/request/rsocket/fail"
    async with http.post(url, json={"status": 422, "message": "no such sku"}) as resp:
        assert resp.status == 422
        error = (await resp.json())["error"]
        assert "no such sku" in error["message"] and error["requestId"]
    async with http.post(url, json={"message": "db password is hunter2"}) as resp:
        assert resp.status == 502
        assert "hunter2" not in await resp.text()


async def test_a_slow_runner_is_a_504_at_the_systems_timeout(stack, http):
    started = time.monotonic()
    async with http.post(f"{stack.url}/api/request/rsocket/sleep", json={"ms": 4000}) as resp:
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "deadline_exceeded"
    assert time.monotonic() - started < 3.5


async def test_a_runner_that_is_down_is_a_502_never_a_hang(stack, http):
    started = time.monotonic()
    async with http.post(f"{stack.url}/api/request/rsdown/echo", json={}) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_unreachable"
    # A stream that fails before its first step is an ordinary JSON error (see edge.stream).
    async with http.get(f"{stack.url}/api/stream/rsdown/count") as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_unreachable"
    assert time.monotonic() - started < 3.0


async def test_a_stream_is_one_event_per_payload(stack, http):
    async with http.get(f"{stack.url}/api/stream/rsocket/count?to=4&wait=50") as resp:
        assert resp.status == 200
        got = await collect(resp)
    assert [(e.kind, e.data) for e in got] == [
        ("message", "1"),
        ("message", "2"),
        ("message", "3"),
        ("message", "4"),
        ("end", "{}"),
    ]


async def test_a_client_that_goes_away_cancels_the_runners_stream(stack, http):
    tag = uuid.uuid4().hex
    url = f"{stack.url}/api/stream/rsocket/count?to=1000&wait=100&tag={tag}"
    async with http.get(url) as resp:
        assert (await anext(events(resp))).data == "1"
        # the client leaves here
    end = time.monotonic() + 30  # as the RPC saga's: a Cancel on Tansu may take seconds
    while time.monotonic() < end:  # another process: its log is all there is to watch
        [call] = [c for c in await runner_calls(http, stack) if c["parameters"].get("tag") == tag]
        if call["cancelled"]:
            break
        await asyncio.sleep(0.05)
    assert call["cancelled"] and not call["completed"]
    # Flow control: the runner emitted no more than the edge's window, client gone or not.
    assert call["emitted"] < 50


async def test_a_restarted_runner_is_reconnected(stack, http):
    """One of ``rsown``'s two hosts is down for good: calls go to the other; when that one
    is killed calls answer 502 at once; once it is back, calls succeed again."""
    url = f"{stack.url}/api/request/rsown/echo"
    runner = rsocket_runner(OWN_PORT)
    try:
        for _ in range(4):
            async with http.post(url, json={"n": 1}) as resp:
                assert resp.status == 200
        stop(runner)
        async with http.post(url, json={}) as resp:
            assert resp.status == 502
        runner = rsocket_runner(OWN_PORT)
        end = time.monotonic() + 10
        status = 0
        while time.monotonic() < end and status != 200:
            async with http.post(url, json={}) as resp:
                status = resp.status
                assert status in (200, 502)
        assert status == 200
    finally:
        with contextlib.suppress(Exception):
            stop(runner)
