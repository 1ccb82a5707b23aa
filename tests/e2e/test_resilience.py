"""Rate limits, bulkheads, circuit breakers and retries against real edge, adapter and runner
processes (``busgate dev`` plus extra edges and a runner of the test's own), on NATS and
Kafka.

Channels of the stack, all on the sample runner unless said otherwise:
``limited`` (a per-user limit of 50 per 10 s, callers identified by API key), ``perip``
(5 per minute per client IP), ``bulk`` (bulkhead of 2, no wait), ``retry`` (3 attempts),
``brk`` (a breaker; system ``brk`` is a runner process this module starts and kills).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp
import pytest

from busgate.brokers import free_port, start_on_free_port, wait_for_port
from busgate.cli import DEV_CONFIG
from tests.stack import DevStack, dev_stack

pytestmark = pytest.mark.e2e

API_KEY = "resilience-test-key-" + "k" * 24
PASSWORD = "resilience-test-password"


def stack_env(brk_port: int) -> dict[str, str]:
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    return {
        "BUSGATE_DEV_PASSWORD": PASSWORD,
        "BUSGATE__TOKENS__MAIN__API_KEYS__BOT__HASH": f"sha256:{digest}",
        "BUSGATE__CHANNELS__LIMITED__SYSTEM": "demo",
        "BUSGATE__CHANNELS__LIMITED__AUTH": "main",
        "BUSGATE__CHANNELS__LIMITED__RESILIENCE__USER": "{ limit = 50, period = 10 }",
        "BUSGATE__CHANNELS__PERIP__SYSTEM": "demo",
        "BUSGATE__CHANNELS__PERIP__RESILIENCE__IP": "{ limit = 5, period = 60 }",
        "BUSGATE__CHANNELS__BULK__SYSTEM": "demo",
        "BUSGATE__CHANNELS__BULK__RESILIENCE__BULKHEAD": "{ max_concurrent = 2, max_wait = 0 }",
        "BUSGATE__CHANNELS__RETRY__SYSTEM": "demo",
        "BUSGATE__CHANNELS__RETRY__TIMEOUT": "1.0",
        "BUSGATE__CHANNELS__RETRY__RESILIENCE__RETRY": "{ attempts = 3, wait = 0.05 }",
        "BUSGATE__SYSTEMS__BRK__TYPE": "rpc",
        "BUSGATE__SYSTEMS__BRK__TIMEOUT": "2.0",
        "BUSGATE__SYSTEMS__BRK__BASE_URL": f"http://127.0.0.1:{brk_port}/api/demo",
        "BUSGATE__CHANNELS__BRK__SYSTEM": "brk",
        "BUSGATE__CHANNELS__BRK__RESILIENCE__BREAKER": (
            "{ size = 4, min_calls = 4, failure_rate = 50, open_wait = 2, half_open_calls = 1 }"
        ),
    }


def start_runner(port: int) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "busgate", "runner", "rpc", "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(args)
    wait_for_port("127.0.0.1", port, 30, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Stack:
    def __init__(self, dev: DevStack, brk_port: int, env: dict[str, str]) -> None:
        self.dev = dev
        self.url = dev.url
        self.brk_port = brk_port
        self.env = env
        self.brk_runner: subprocess.Popen[bytes] | None = None


@pytest.fixture(scope="module", params=["nats", "kafka"])
def stack(request) -> Iterator[Stack]:
    request.applymarker(getattr(pytest.mark, request.param))
    brk_port = free_port()
    env = stack_env(brk_port)
    with dev_stack(request.param, env=env) as dev:
        running = Stack(dev, brk_port, env)
        running.brk_runner = start_runner(brk_port)
        try:
            yield running
        finally:
            stop(running.brk_runner)


def start_edge(stack: Stack, **extra: str) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSGATE")}
    env |= {k: v for k, v in stack.env.items() if k.startswith("BUSGATE__")}
    env |= {
        "BUSGATE__GATEWAY__BUS": stack.dev.parts["bus"],
        "BUSGATE_TOKEN_SECRET": "edge-of-the-resilience-test-" + "s" * 32,
        **extra,
    }
    args = [sys.executable, "-m", "busgate", "edge", "--config", str(DEV_CONFIG)]
    port, proc = start_on_free_port(
        lambda port: subprocess.Popen(
            args, env={**env, "BUSGATE__GATEWAY__LISTEN": f"127.0.0.1:{port}"}
        ),
        timeout=60,
    )
    return proc, f"http://127.0.0.1:{port}"


async def clear_of_window_edge(period: float, need: float) -> None:
    """Wait, if needed, so that the next ``need`` seconds fall in one window of ``period``
    (windows are aligned on the wall clock: a test across two would see two limits)."""
    if period - time.time() % period < need:
        await asyncio.sleep(period - time.time() % period + 0.05)


async def until(check, within: float = 60.0) -> None:
    end = time.monotonic() + within
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {within:g} s")
        await asyncio.sleep(0.1)


async def readyz(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(f"{url}/readyz") as resp:
        return await resp.json()


async def serves(http: aiohttp.ClientSession, url: str, system: str = "demo") -> bool:
    try:
        return bool((await readyz(http, url))["systems"].get(system))
    except aiohttp.ClientError:
        return False


# -- rate limits ----------------------------------------------------------------------


async def test_three_edges_share_one_user_limit(stack, http):
    """Three edge processes, one limit of 50 per 10 s for one user, 300 calls spread over
    the three as fast as they go: between 50 and 55 are admitted, not 150."""
    extra = [start_edge(stack), start_edge(stack)]
    try:
        urls = [stack.url, *(url for _, url in extra)]

        async def all_see_each_other() -> bool:
            for url in urls:
                try:
                    body = await readyz(http, url)
                except aiohttp.ClientError:
                    return False
                if (
                    body.get("resilience", {}).get("limit_peers") != 2
                    or not body["systems"]["demo"]
                ):
                    return False
            return True

        await until(all_see_each_other)
        # Start at the beginning of a window, so that the 300 calls fall in one.
        await asyncio.sleep(10 - time.time() % 10 + 0.05)
        headers = {"X-Api-Key": API_KEY}

        async def call(n: int) -> int:
            url = urls[n % 3]
            async with http.get(f"{url}/api/request/limited/echo", headers=headers) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(call(n) for n in range(300)))
        admitted = statuses.count(200)
        assert set(statuses) <= {200, 429}, set(statuses)
        print(f"shared limit 50/10s over 3 edges: {admitted} of 300 admitted")
        assert 50 <= admitted <= 55, admitted
    finally:
        for proc, _ in extra:
            stop(proc)


async def test_per_ip_limit_ignores_forwarded_for_from_an_untrusted_peer(stack, http):
    await clear_of_window_edge(60, 10)
    statuses = []
    for n in range(8):
        headers = {"X-Forwarded-For": f"198.51.100.{n}"}  # a client picking its IP
        async with http.get(f"{stack.url}/api/request/perip/echo", headers=headers) as resp:
            await resp.read()
            statuses.append(resp.status)
            if resp.status == 429:
                refused = resp
    assert statuses == [200] * 5 + [429] * 3
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Policy"] == '"ip-perip";q=5;w=60'
    assert refused.headers["RateLimit"].startswith('"ip-perip";r=0;t=')


async def test_per_ip_limit_behind_a_trusted_proxy(stack, http):
    proc, url = start_edge(stack, BUSGATE__GATEWAY__TRUSTED_PROXIES='["127.0.0.1/32"]')
    try:
        await until(lambda: serves(http, url))
        await clear_of_window_edge(60, 15)

        async def status(ip: str) -> int:
            headers = {"X-Forwarded-For": ip}
            async with http.get(f"{url}/api/request/perip/echo", headers=headers) as resp:
                await resp.read()
                return resp.status

        one = [await status("203.0.113.10") for _ in range(6)]
        other = [await status("203.0.113.11") for _ in range(2)]
        assert one == [200] * 5 + [429]  # each client behind the proxy has its own limit
        assert other == [200, 200]
    finally:
        stop(proc)


async def test_login_brute_force_is_slowed(stack, http):
    url = f"{stack.url}/api/auth/login/auth/password"
    await clear_of_window_edge(60, 15)
    statuses = []
    for _ in range(13):
        async with http.post(url, json={"username": "demo", "password": "wrong"}) as resp:
            body = await resp.json()
            statuses.append(resp.status)
    assert statuses == [401] * 10 + [429] * 3
    assert body["error"]["code"] == "rate_limited"
    # the same username stays locked for the period, even with the right password...
    async with http.post(url, json={"username": "demo", "password": PASSWORD}) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) > 1
    # ...while another user from the same address logs in
    async with http.post(url, json={"username": "admin", "password": PASSWORD}) as resp:
        assert resp.status == 200


# -- bulkhead -------------------------------------------------------------------------


async def test_bulkhead_refuses_past_max_concurrent(stack, http):
    async def sleep() -> tuple[int, dict]:
        url = f"{stack.url}/api/request/bulk/sleep?ms=800"
        async with http.get(url) as resp:
            return resp.status, await resp.json()

    results = await asyncio.gather(*(sleep() for _ in range(5)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200, 503, 503, 503]
    codes = {body["error"]["code"] for status, body in results if status == 503}
    assert codes == {"bulkhead_full"}
    # the slots are free again
    status, _ = await sleep()
    assert status == 200


# -- retries --------------------------------------------------------------------------


async def test_runner_failing_twice_then_succeeding_is_a_200(stack, http):
    key = f"get-{stack.dev.bus}-{time.time()}"
    async with http.get(f"{stack.url}/api/request/retry/flaky", params={"key": key}) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"key": key, "calls": 3, "attempt": 3}


async def test_post_is_not_retried(stack, http):
    key = f"post-{stack.dev.bus}-{time.time()}"
    async with http.post(f"{stack.url}/api/request/retry/flaky", json={"key": key}) as resp:
        assert resp.status == 502
    async with http.get(f"{stack.dev.runner}/calls") as resp:
        calls = [c for c in await resp.json() if (c["parameters"] or {}).get("key") == key]
    assert len(calls) == 1


async def test_no_retry_past_the_deadline(stack, http):
    """Channel timeout 1 s; the runner takes 600 ms, then fails 503, each time: the second
    attempt would start at about 0.65 s and could not end before the deadline -- it is
    started (the budget is the deadline's), cut at the deadline, and no third follows."""
    key = f"slow-{stack.dev.bus}-{time.time()}"
    params = {"key": key, "failures": "9", "ms": "600"}
    start = time.monotonic()
    async with http.get(f"{stack.url}/api/request/retry/flaky", params=params) as resp:
        await resp.read()
        status = resp.status
    took = time.monotonic() - start
    assert status in (502, 504)
    assert took < 1.3  # answered at the deadline, not after more attempts
    async with http.get(f"{stack.dev.runner}/calls") as resp:
        calls = [c for c in await resp.json() if (c["parameters"] or {}).get("key") == key]
    assert len(calls) <= 2, calls


# -- circuit breaker ------------------------------------------------------------------


async def test_breaker_opens_fails_fast_half_opens_and_closes(stack, http):
    await until(lambda: serves(http, stack.url, "brk"))
    url = f"{stack.url}/api/request/brk/echo"

    async def call() -> tuple[int, str, float]:
        start = time.monotonic()
        async with http.get(url) as resp:
            body = await resp.json()
            code = body.get("error", {}).get("code", "") if isinstance(body, dict) else ""
            return resp.status, code, time.monotonic() - start

    assert (await call())[0] == 200
    assert stack.brk_runner is not None
    stop(stack.brk_runner)  # the runner dies
    failures = [await call() for _ in range(4)]
    # 502 (the runner is unreachable) until the breaker has seen enough, then 503
    assert [code for _, code, _ in failures][:3] == ["upstream_unreachable"] * 3, failures
    state = (await readyz(http, stack.url))["resilience"]["breakers"]["brk"]["state"]
    assert state == "open"

    published = await count_requests(stack, "brk", [call() for _ in range(20)])
    results, seen_on_bus = published
    assert all(code == "circuit_open" for _, code, _ in results), results
    assert max(took for _, _, took in results) < 0.1
    assert seen_on_bus == 0  # refused at the edge: nothing crossed the bus

    stack.brk_runner = start_runner(stack.brk_port)  # the runner is back
    await asyncio.sleep(2.1)  # open_wait
    status, _, _ = await call()  # the half-open trial call
    assert status == 200
    state = (await readyz(http, stack.url))["resilience"]["breakers"]["brk"]["state"]
    assert state == "closed"
    assert [(await call())[0] for _ in range(3)] == [200, 200, 200]


async def count_requests(stack: Stack, system: str, calls: list) -> tuple[list, int]:
    """Run ``calls`` while counting the requests for ``system`` that cross the bus."""
    topic = f"busgate.req.{system}"
    if stack.dev.bus == "nats":
        import nats

        nc = await nats.connect(stack.dev.parts["bus"])
        seen = 0

        async def on_msg(msg) -> None:
            nonlocal seen
            seen += 1

        await nc.subscribe(topic, cb=on_msg)
        await nc.flush()
        results = [await c for c in calls]
        await nc.flush()
        await asyncio.sleep(0.2)
        await nc.close()
        return results, seen
    from aiokafka import AIOKafkaConsumer, TopicPartition

    servers = stack.dev.parts["bus"].split("://", 1)[1]
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # metadata, for partitions_for_topic
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or {0}]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        before = {tp: await consumer.position(tp) for tp in tps}
        results = [await c for c in calls]
        await asyncio.sleep(0.5)
        after = await consumer.end_offsets(tps)
        return results, sum(after[tp] - before[tp] for tp in tps)
    finally:
        await consumer.stop()
