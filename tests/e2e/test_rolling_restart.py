"""Stopping an adapter process the way systemd or Kubernetes do (SIGTERM) while requests
flow loses none of them: it says goodbye, leaves its group, finishes what it holds and exits
cleanly, and the other adapter answers the rest. Separate processes, over NATS and Kafka.

"What it holds" is checked, not assumed: the runner's call log says which calls the stopped
adapter was making when SIGTERM arrived (by the local ports of its connections), and those
must be among the ones answered 200."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of process ``pid``'s sockets (Linux /proc): the runner logs each
    call's peer, so these say which calls came from that process."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


SLEEP = 1.0
"""Each call's saga sleeps this long at the runner: at ~100 calls/s over two adapters, the
one stopped holds dozens when SIGTERM lands -- and a busy machine may take a few hundred ms
between seeing the adapter call and the signal, so the window is wide (0.3 s was not, once
on Kafka in CI-like load)."""


async def test_sigterm_to_an_adapter_under_load_loses_no_request(stack, http):
    before = await adapters_of_demo(http, stack)
    extra = start_adapter(stack)
    try:
        await until(lambda: _more_adapters(http, stack, len(before)))
        statuses: list[asyncio.Future[int]] = []
        flowing = True

        async def call(n: int) -> int:
            url = f"{stack.url}/api/request/demo/sleep"
            async with http.post(url, json={"ms": int(SLEEP * 1000), "n": n}) as resp:
                return resp.status

        async def steady_flow() -> None:
            while flowing:
                statuses.append(asyncio.ensure_future(call(len(statuses))))
                await asyncio.sleep(0.01)

        sender = asyncio.ensure_future(steady_flow())
        await until(lambda: len(statuses) >= 50)

        async def extra_is_calling() -> bool:
            """The extra adapter started a runner call in the last half of SLEEP."""
            async with http.get(f"{stack.runner}/calls") as resp:
                calls = await resp.json()
            ports = local_ports(extra.pid)
            now = time.monotonic()
            return any(
                c["peer"] and c["peer"][1] in ports and now - c["at"] < SLEEP / 2 for c in calls
            )

        await until(extra_is_calling, within=30)
        extra_ports = local_ports(extra.pid)
        sigterm_at = time.monotonic()  # CLOCK_MONOTONIC: the runner's "at" is comparable
        extra.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(extra.wait, 30) == 0
        await until(lambda: _same_adapters(http, stack, before))
        sent = len(statuses)
        await until(lambda: len(statuses) >= sent + 50)
        flowing = False
        await sender
        got = await asyncio.gather(*statuses)
        async with http.get(f"{stack.runner}/calls") as resp:
            calls = await resp.json()
    finally:
        if extra.poll() is None:
            extra.kill()
            extra.wait()
    assert got == [200] * len(got), {s: got.count(s) for s in set(got)}
    # The stopped adapter was in the middle of calls when SIGTERM came (its runner call had
    # started and was still sleeping), and each of them was answered 200 above.
    held = [
        c["parameters"]["n"]
        for c in calls
        if c["saga"] == "sleep"
        and c["peer"] is not None
        and c["peer"][1] in extra_ports
        and c["at"] <= sigterm_at < c["at"] + SLEEP
    ]
    assert held, "the SIGTERMed adapter held no request: nothing was tested"
    assert all(got[n] == 200 for n in held)
    print(f"\n{stack.parts['bus']}: the stopped adapter held {len(held)} calls at SIGTERM")


async def _more_adapters(http: aiohttp.ClientSession, stack: DevStack, than: int) -> bool:
    return len(await adapters_of_demo(http, stack)) > than


async def _same_adapters(http: aiohttp.ClientSession, stack: DevStack, as_: list[str]) -> bool:
    return await adapters_of_demo(http, stack) == as_
