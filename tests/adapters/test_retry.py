"""The adapter's retries of runner calls (``adapters.retry``), against the real sample
runner: a runner failing twice then succeeding becomes a 200; POST is not retried; no
retry runs past the deadline; the runner sees ``meta.attempt``."""

from __future__ import annotations

import time
import uuid

import pytest
from aiohttp.test_utils import TestServer

from busgate.adapters.retry import retry_for
from busgate.adapters.rpc.client import RpcClient
from busgate.contracts import errors
from busgate.contracts.codec import json_decode, json_encode
from busgate.contracts.config import parse
from busgate.contracts.wire import Request
from busgate.runners.rpc import CALLS, create_app


@pytest.fixture
async def runner():
    server = TestServer(create_app())
    await server.start_server()
    yield server
    await server.close()


def config(runner, retry: str = "{ attempts = 3, wait = 0.05 }"):
    import tomllib

    raw = tomllib.loads(
        f"""
        [systems.demo]
        type = "rpc"
        base_url = "{runner.make_url("/api/demo")}"
        [channels.demo]
        system = "demo"
        resilience.retry = {retry}
        [channels.plain]
        system = "demo"
        """
    )
    return parse(raw)


@pytest.fixture
async def client(runner):
    cfg = config(runner)
    rpc = RpcClient("demo", cfg.systems["demo"], cfg.gateway, retry_for(cfg))
    yield rpc
    await rpc.close()


def call(saga: str, params: dict, method: str = "GET", channel: str = "demo", **kw) -> Request:
    return Request(
        id=f"gw-{uuid.uuid4().hex[:8]}",
        channel=channel,
        system="demo",
        path=saga,
        method=method,
        body=json_encode(params),
        deadline=kw.pop("deadline", time.time() + 5),
        **kw,
    )


def attempts_of(runner, key: str) -> list[int | None]:
    return [
        c["attempt"]
        for c in runner.app[CALLS]
        if c["saga"] == "flaky" and (c["parameters"] or {}).get("key") == key
    ]


async def test_failing_twice_then_succeeding_is_a_200(client, runner):
    reply = await client.call(call("flaky", {"key": "a"}))
    assert reply.status == 200
    assert json_decode(reply.body) == {"key": "a", "calls": 3, "attempt": 3}
    assert attempts_of(runner, "a") == [1, 2, 3]


async def test_post_is_not_retried(client, runner):
    with pytest.raises(errors.UpstreamError, match="503"):
        await client.call(call("flaky", {"key": "b"}, method="POST"))
    assert len(attempts_of(runner, "b")) == 1


async def test_a_channel_without_retry_calls_once(client, runner):
    with pytest.raises(errors.UpstreamError):
        await client.call(call("flaky", {"key": "c"}, channel="plain"))
    assert attempts_of(runner, "c") == [None]  # no meta.attempt without a retry policy


async def test_attempts_are_bounded(client, runner):
    with pytest.raises(errors.UpstreamError):
        await client.call(call("flaky", {"key": "d", "failures": 5}))
    assert attempts_of(runner, "d") == [1, 2, 3]


async def test_status_not_listed_is_not_retried(client, runner):
    with pytest.raises(errors.UpstreamError):
        await client.call(call("flaky", {"key": "e", "status": 500}))
    assert attempts_of(runner, "e") == [1]


async def test_no_retry_past_the_deadline(runner):
    cfg = config(runner, "{ attempts = 5, wait = 0.4, backoff = 1.0, jitter = 0.0 }")
    rpc = RpcClient("demo", cfg.systems["demo"], cfg.gateway, retry_for(cfg))
    try:
        start = time.monotonic()
        with pytest.raises(errors.UpstreamError):
            await rpc.call(call("flaky", {"key": "f", "failures": 5}, deadline=time.time() + 1.0))
        assert time.monotonic() - start < 1.0  # gave up before the deadline, not at it
        # at 0, 0.4 and 0.8 s; a fourth at 1.2 s would be past the deadline: not made
        assert attempts_of(runner, "f") == [1, 2, 3]
    finally:
        await rpc.close()


async def test_unreachable_runner_is_retried(runner):
    """``upstream_unreachable`` is in ``on_codes`` by default: a connection refused is retried
    (here until the attempts are spent)."""
    from busgate.brokers import free_port

    cfg = config(runner, "{ attempts = 3, wait = 0.01 }")
    system = cfg.systems["demo"]
    down = type(system)(base_url=f"http://127.0.0.1:{free_port()}/x")
    rpc = RpcClient("demo", down, cfg.gateway, retry_for(cfg))
    try:
        start = time.monotonic()
        with pytest.raises(errors.UpstreamUnreachable):
            await rpc.call(call("echo", {}))
        assert time.monotonic() - start >= 0.01 + 0.02 * 0.8
    finally:
        await rpc.close()


def test_no_retry_configured_means_no_lookup_per_call() -> None:
    """A config that sets no retry anywhere gives no lookup at all (the client skips the two
    per call); one retry on one path of one channel keeps the lookup, for every channel."""
    import msgspec

    plain = parse(
        {
            "systems": {"demo": {"type": "rpc", "base_url": "http://127.0.0.1:9"}},
            "channels": {"demo": {"system": "demo", "paths": {"x": {"timeout": 2.0}}}},
        }
    )
    assert retry_for(plain) is None
    on_path = parse(
        msgspec.to_builtins(plain)
        | {
            "channels": {
                "demo": {"system": "demo", "paths": {"x": {"resilience": {"retry": {}}}}},
                "other": {"system": "demo"},
            }
        }
    )
    lookup = retry_for(on_path)
    assert lookup is not None
    assert lookup(_req("demo", "x")) is not None
    assert lookup(_req("other", "x")) is None


def _req(channel: str, path: str) -> Request:
    return Request(id="r", channel=channel, system="demo", path=path, method="GET")
