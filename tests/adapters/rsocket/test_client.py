"""The RSocket adapter client against the real sample runner (``busgate.runners.rsocket``)
on a real tcp socket: request-response, errors, deadlines, request-stream with request-n
tied to the edge's credits, CANCEL, several hosts."""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import pytest

from busgate.adapters.rsocket.client import RsocketClient
from busgate.adapters.rsocket.pool import targets
from busgate.brokers import free_port
from busgate.bus.flow import Credits
from busgate.contracts import errors
from busgate.contracts.codec import json_decode
from busgate.contracts.config import Gateway, RsocketSystem
from busgate.contracts.wire import Request
from busgate.runners.rsocket import Listener, Sagas, serve, websocket_app

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Steps:
    """Stands in for the bus Responder: records the steps, can be cancelled, and holds the
    edge's credits (``credits`` = the initial window; 0 = no flow control)."""

    def __init__(self, credits: int = 0) -> None:
        self.cancelled = asyncio.Event()
        self.steps: list[dict] = []
        self.arrived: asyncio.Queue[dict] = asyncio.Queue()
        self.credits = Credits(credits)

    def may_step(self) -> bool:
        return self.credits.allows(len(self.steps) + 1)

    async def step(self, items, *, next=None, last=False, error=None) -> None:
        self.steps.append({"items": items, "next": next, "last": last, "error": error})
        self.arrived.put_nowait(self.steps[-1])


class Runner:
    def __init__(self) -> None:
        self.sagas = Sagas()
        self.port = free_port()
        self.listener: Listener | None = None

    async def start(self) -> None:
        self.listener = await serve("127.0.0.1", self.port, self.sagas)

    async def stop(self) -> None:
        assert self.listener is not None
        await self.listener.close()


@pytest.fixture
async def runner():
    running = Runner()
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def client_for():
    clients = []

    def make(*ports: int, **gateway) -> RsocketClient:
        hosts = tuple(f"127.0.0.1:{p}" for p in ports)
        system = RsocketSystem(hosts=hosts, timeout=2.0, retry_duration=0.05)
        clients.append(RsocketClient("rs", system, Gateway(**gateway)))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


def request(path: str, body: bytes = b"{}", kind="request", timeout: float = 2.0, credits=0):
    return Request(
        id=f"r-{path}-{time.monotonic_ns()}",
        kind=kind,
        channel="rs",
        system="rs",
        path=path,
        body=body,
        traceparent=TRACEPARENT,
        deadline=time.time() + timeout,
        credits=credits,
    )


async def test_request_response_carries_the_route_and_ids(runner, client_for):
    client = client_for(runner.port)
    reply = await client.call(request("echo", b'{"hello":"world"}'))
    assert reply.status == 200 and json_decode(reply.body) == {"hello": "world"}
    req = request("meta")
    meta = json_decode((await client.call(req)).body)
    assert meta["requestId"] == req.id
    assert meta["traceparent"] == TRACEPARENT
    assert meta["traceId"] == "0af7651916cd43dd8448eb211c80319c"
    assert (meta["channel"], meta["path"]) == ("rs", "meta")
    assert "query" not in meta
    queried = msgspec.structs.replace(req, method="POST", query={"page": "2"})
    assert json_decode((await client.call(queried)).body)["query"] == {"page": "2"}


async def test_a_runners_4xx_passes_through_and_a_5xx_is_a_502(runner, client_for):
    client = client_for(runner.port)
    with pytest.raises(errors.RunnerRefused) as refused:
        await client.call(request("fail", b'{"status": 409, "message": "taken"}'))
    assert refused.value.status == 409 and "taken" in refused.value.message
    with pytest.raises(errors.UpstreamError) as failed:
        await client.call(request("fail", b'{"message": "secret internals"}'))
    assert failed.value.status == 502 and "secret" not in failed.value.message
    with pytest.raises(errors.RunnerRefused) as unknown:
        await client.call(request("nope"))
    assert unknown.value.status == 404


async def test_a_slow_runner_is_a_504_at_the_deadline_and_gets_cancel(runner, client_for):
    client = client_for(runner.port)
    started = time.monotonic()
    req = request("sleep", b'{"ms": 5000}', timeout=0.5)
    with pytest.raises(errors.DeadlineExceeded):
        await client.call(req)
    assert time.monotonic() - started < 1.5
    assert await asyncio.wait_for(runner.sagas.cancels.get(), 5) == req.id


async def test_a_connection_lost_mid_call_is_a_502_at_once(runner, client_for):
    client = client_for(runner.port)
    assert (await client.call(request("echo"))).status == 200
    slow = asyncio.create_task(client.call(request("sleep", b'{"ms": 5000}', timeout=5)))
    while await runner.sagas.arrivals.get() != "sleep":
        pass
    started = time.monotonic()
    await runner.stop()
    with pytest.raises(errors.UpstreamUnreachable):
        await slow
    assert time.monotonic() - started < 1.0


async def test_a_runner_that_is_down_is_a_502_at_once(client_for):
    client = client_for(free_port())
    started = time.monotonic()
    with pytest.raises(errors.UpstreamUnreachable):
        await client.call(request("echo"))
    assert time.monotonic() - started < 1.0


async def test_calls_are_spread_over_the_hosts_and_skip_a_dead_one(client_for):
    a, b = Runner(), Runner()
    await a.start()
    await b.start()
    dead = free_port()
    try:
        client = client_for(a.port, dead, b.port)
        assert await client.pool.connect_all() == 2
        for _ in range(6):
            assert (await client.call(request("echo"))).status == 200
        assert (len(a.sagas.calls), len(b.sagas.calls)) == (3, 3)
    finally:
        await a.stop()
        await b.stop()


async def test_a_stream_sends_one_step_per_payload(runner, client_for):
    client = client_for(runner.port)
    steps = Steps()
    await client.stream(request("count", b'{"to": 4, "wait": 0}', kind="stream"), steps)
    assert [s["items"] for s in steps.steps] == [[b"1"], [b"2"], [b"3"], [b"4"]]
    assert [s["last"] for s in steps.steps] == [False, False, False, True]
    assert runner.sagas.calls[-1]["completed"] is True


async def test_request_n_follows_the_edges_credits(runner, client_for):
    """A runner that could emit a million payloads at once emits only what the edge can
    take: 2 at first, 3 more after a credit up to 5."""
    client = client_for(runner.port)
    steps = Steps(credits=2)
    req = request("count", b'{"to": 1000000, "wait": 0}', kind="stream", timeout=10)
    task = asyncio.create_task(client.stream(req, steps))
    for _ in range(2):
        await steps.arrived.get()
    call = runner.sagas.calls[-1]
    steps.credits.grant(5)
    for _ in range(3):
        await steps.arrived.get()
    # The runner was asked for exactly 5: the generator never ran ahead of the credits.
    assert call["emitted"] == 5
    assert [s["items"] for s in steps.steps] == [[b"1"], [b"2"], [b"3"], [b"4"], [b"5"]]
    steps.cancelled.set()
    await task
    assert await asyncio.wait_for(runner.sagas.cancels.get(), 5) == req.id
    assert call["emitted"] == 5


async def test_a_client_that_goes_away_sends_cancel_to_the_runner(runner, client_for):
    client = client_for(runner.port)
    steps = Steps()
    req = request("count", b'{"to": 100, "wait": 200}', kind="stream", timeout=10)
    task = asyncio.create_task(client.stream(req, steps))
    await steps.arrived.get()
    steps.cancelled.set()
    await asyncio.wait_for(task, 2)
    assert await asyncio.wait_for(runner.sagas.cancels.get(), 5) == req.id
    assert runner.sagas.calls[-1]["completed"] is False


async def test_a_failing_stream_ends_with_an_error_step(runner, client_for):
    client = client_for(runner.port)
    steps = Steps()
    await client.stream(
        request("count", b'{"to": 5, "wait": 0, "fail_at": 3}', kind="stream"), steps
    )
    assert [s["items"] for s in steps.steps[:2]] == [[b"1"], [b"2"]]
    assert steps.steps[-1]["last"] and isinstance(steps.steps[-1]["error"], errors.UpstreamError)


async def test_a_stream_to_a_down_runner_ends_with_a_502_step(client_for):
    client = client_for(free_port())
    steps = Steps()
    await client.stream(request("count", kind="stream"), steps)
    assert len(steps.steps) == 1 and steps.steps[0]["last"]
    assert isinstance(steps.steps[0]["error"], errors.UpstreamUnreachable)


async def test_a_slow_saga_does_not_hold_up_the_connection(runner, client_for):
    """The runner answers an echo while a sleep on the same connection is still running."""
    client = client_for(runner.port)
    slow = asyncio.create_task(client.call(request("sleep", b'{"ms": 3000}', timeout=5)))
    await asyncio.sleep(0)
    started = time.monotonic()
    assert (await client.call(request("echo", timeout=5))).status == 200
    assert time.monotonic() - started < 1.0
    assert not slow.done()
    slow.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await slow


async def test_websocket_hosts_work_like_tcp_ones(client_for):
    """``protocol = "websocket"``: the same calls over the runner's websocket endpoint."""
    sagas = Sagas()
    port = free_port()
    site = await websocket_app("127.0.0.1", port, sagas)
    system = RsocketSystem(protocol="websocket", urls=(f"ws://127.0.0.1:{port}/rsocket",))
    client = RsocketClient("rs", system, Gateway())
    try:
        reply = await client.call(request("echo", b'{"over": "ws"}'))
        assert json_decode(reply.body) == {"over": "ws"}
        steps = Steps(credits=2)
        task = asyncio.create_task(
            client.stream(request("count", b'{"to": 3, "wait": 0}', kind="stream"), steps)
        )
        for _ in range(2):
            await steps.arrived.get()
        steps.credits.grant(10)
        await task
        assert [s["items"] for s in steps.steps] == [[b"1"], [b"2"], [b"3"]]
        assert sagas.calls[-1]["emitted"] == 3
    finally:
        await client.close()
        await site.cleanup()


def test_tcp_hosts_default_to_port_7000():
    system = RsocketSystem(hosts=("a", "b:7100", "[::1]:7200"))
    assert targets(system) == ["a:7000", "b:7100", "[::1]:7200"]


async def test_a_bad_parameter_is_the_runners_400_not_a_502(runner, client_for):
    client = client_for(runner.port)
    with pytest.raises(errors.RunnerRefused) as refused:
        await client.call(request("sleep", b'{"ms": "long"}'))
    assert refused.value.status == 400
    steps = Steps()
    req = msgspec.structs.replace(request("count", kind="stream"), resume="not-a-number")
    await client.stream(req, steps)
    assert steps.steps[-1]["error"].status == 400
