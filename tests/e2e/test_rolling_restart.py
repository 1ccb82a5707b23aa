"""Stopping an adapter process the way systemd or Kubernetes do (SIGTERM) while requests
flow loses none of them: it says goodbye, leaves its group, finishes what it holds and exits
cleanly, and the other adapter answers the rest. Separate processes, over NATS and Kafka."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from busgate.cli import DEV_CONFIG
from tests.stack import DevStack, dev_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["nats", "kafka"])
def stack(request):
    request.applymarker(getattr(pytest.mark, request.param))
    with dev_stack(request.param) as running:
        yield running


async def adapters_of_demo(http: aiohttp.ClientSession, stack: DevStack) -> list[str]:
    async with http.get(f"{stack.url}/readyz") as resp:
        return (await resp.json())["systems"]["demo"]


async def until(check, within: float = 60.0) -> None:
    """Poll ``check()`` (plain or async) until it holds; fail after ``within`` seconds."""
    end = time.monotonic() + within
    while not ((await held) if inspect.isawaitable(held := check()) else held):
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {within:g} s")
        await asyncio.sleep(0.1)


def start_adapter(stack: DevStack) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSGATE__")}
    env |= {
        "BUSGATE__GATEWAY__BUS": stack.parts["bus"],
        "BUSGATE__SYSTEMS__DEMO__BASE_URL": stack.parts["runner"],
        "BUSGATE_TOKEN_SECRET": "not-used-by-this-adapter-" + "x" * 32,
    }
    args = ["-m", "busgate", "adapter", "--config", str(DEV_CONFIG), "--system", "demo"]
    return subprocess.Popen([sys.executable, *args], env=env)


async def test_sigterm_to_an_adapter_under_load_loses_no_request(stack, http):
    before = await adapters_of_demo(http, stack)
    extra = start_adapter(stack)
    try:
        await until(lambda: _more_adapters(http, stack, len(before)))
        statuses: list[asyncio.Future[int]] = []
        flowing = True

        async def call() -> int:
            url = f"{stack.url}/api/request/demo/sleep"
            async with http.post(url, json={"ms": 50}) as resp:
                return resp.status

        async def steady_flow() -> None:
            while flowing:
                statuses.append(asyncio.ensure_future(call()))
                await asyncio.sleep(0.01)

        sender = asyncio.ensure_future(steady_flow())
        await until(lambda: len(statuses) >= 50)
        extra.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(extra.wait, 30) == 0
        await until(lambda: _same_adapters(http, stack, before))
        sent = len(statuses)
        await until(lambda: len(statuses) >= sent + 50)
        flowing = False
        await sender
        got = await asyncio.gather(*statuses)
    finally:
        if extra.poll() is None:
            extra.kill()
            extra.wait()
    assert got == [200] * len(got), {s: got.count(s) for s in set(got)}


async def _more_adapters(http: aiohttp.ClientSession, stack: DevStack, than: int) -> bool:
    return len(await adapters_of_demo(http, stack)) > than


async def _same_adapters(http: aiohttp.ClientSession, stack: DevStack, as_: list[str]) -> bool:
    return await adapters_of_demo(http, stack) == as_
