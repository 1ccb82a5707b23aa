"""The RPC adapter's saga loop (``RpcClient.stream``) against the real sample runner."""

from __future__ import annotations

import asyncio
import collections
import time

import msgspec
import pytest
from aiohttp.test_utils import TestServer

from busgate.adapters.rpc.client import RpcClient, cursor_text
from busgate.bus.flow import Credits
from busgate.contracts import errors
from busgate.contracts.codec import json_encode
from busgate.contracts.config import Gateway, RpcSystem
from busgate.contracts.wire import Request
from busgate.runners.rpc import CALLS, create_app


class Steps:
    """Stands in for the bus Responder: records the steps, can be cancelled, and holds the
    edge's credits (``credits`` = the initial window; 0 = no flow control)."""

    def __init__(self, credits: int = 0) -> None:
        self.cancelled = asyncio.Event()
        self.steps: list[dict] = []
        self.arrived = asyncio.Queue()
        self.credits = Credits(credits)
        self.waiting = asyncio.Event()
        """Set when the loop waits for a credit it does not have."""

    def may_step(self) -> bool:
        return self.credits.allows(len(self.steps) + 1)

    async def credit(self) -> bool:
        if not self.may_step():
            self.waiting.set()
        return await self.credits.wait(len(self.steps) + 1, self.cancelled)

    async def step(self, items, *, next=None, last=False, error=None) -> None:
        self.steps.append({"items": items, "next": next, "last": last, "error": error})
        self.arrived.put_nowait(self.steps[-1])


class Calls(collections.deque):
    """The runner's call log, which also says when a call arrives."""

    def __init__(self) -> None:
        super().__init__(maxlen=1000)
        self.arrived = asyncio.Event()

    def append(self, call) -> None:
        super().append(call)
        self.arrived.set()


@pytest.fixture
async def runner():
    app = create_app()
    app[CALLS] = Calls()
    server = TestServer(app)
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def client_for(runner):
    clients = []

    def make(**gateway) -> RpcClient:
        system = RpcSystem(base_url=str(runner.make_url("/api/demo")), timeout=2.0)
        clients.append(RpcClient("demo", system, Gateway(**gateway)))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


def stream_request(body: dict, resume: str | None = None) -> Request:
    return Request(
        id="gw-s-1",
        kind="stream",
        channel="demo",
        system="demo",
        path="count",
        body=json_encode(body),
        deadline=time.time() + 5,
        resume=resume,
    )


def params(runner) -> list[dict]:
    return [call["parameters"] for call in runner.app[CALLS]]


async def test_the_loop_passes_next_as_previous_until_continue_is_false(client_for, runner):
    steps = Steps()
    await client_for().stream(stream_request({"to": 5, "batch": 2, "wait": 0}), steps)
    assert [(s["items"], s["next"], s["last"]) for s in steps.steps] == [
        ([b"1", b"2"], "2", False),
        ([b"3", b"4"], "4", False),
        ([b"5"], "5", True),
    ]
    assert [p.get("previous") for p in params(runner)] == [None, 2, 4]


async def test_resume_starts_after_the_clients_last_event_id(client_for, runner):
    steps = Steps()
    await client_for().stream(stream_request({"to": 3, "wait": 0}, resume="1"), steps)
    assert [s["items"] for s in steps.steps] == [[b"2"], [b"3"]]
    assert params(runner)[0]["previous"] == "1"


async def test_cancel_stops_the_loop_before_the_next_call(client_for, runner):
    steps = Steps()
    saga = asyncio.ensure_future(
        client_for().stream(stream_request({"to": 9, "wait": 60000}), steps)
    )
    await steps.arrived.get()
    steps.cancelled.set()  # in the middle of a 60 s pause
    await asyncio.wait_for(saga, 10)
    assert len(steps.steps) == 1
    assert len(runner.app[CALLS]) == 1


async def test_a_cancel_during_a_call_sends_nothing_more(client_for, runner):
    steps = Steps()
    # `sleep` holds the call open; its answer would be a (last) step of its own.
    req = msgspec.structs.replace(stream_request({"ms": 500}), path="sleep")
    saga = asyncio.ensure_future(client_for().stream(req, steps))
    await runner.app[CALLS].arrived.wait()  # the runner is in the middle of the call
    steps.cancelled.set()
    await asyncio.wait_for(saga, 10)
    assert steps.steps == []
    assert len(runner.app[CALLS]) == 1


async def test_each_runner_call_waits_for_a_credit(client_for, runner):
    steps = Steps(credits=2)
    saga = asyncio.ensure_future(client_for().stream(stream_request({"to": 9, "wait": 0}), steps))
    await steps.waiting.wait()  # out of credit after two steps
    assert [s["items"] for s in steps.steps] == [[b"1"], [b"2"]]
    assert len(runner.app[CALLS]) == 2
    steps.waiting.clear()
    steps.credits.grant(3)  # one more step
    await steps.waiting.wait()
    assert [s["items"] for s in steps.steps] == [[b"1"], [b"2"], [b"3"]]
    assert len(runner.app[CALLS]) == 3
    steps.credits.grant(100)
    await asyncio.wait_for(saga, 10)
    assert [s["items"][0] for s in steps.steps] == [str(n).encode() for n in range(1, 10)]
    assert steps.steps[-1]["last"] is True


async def test_a_cancel_ends_the_wait_for_a_credit(client_for, runner):
    steps = Steps(credits=1)
    saga = asyncio.ensure_future(client_for().stream(stream_request({"to": 9, "wait": 0}), steps))
    await steps.waiting.wait()
    steps.cancelled.set()
    await asyncio.wait_for(saga, 10)
    assert len(steps.steps) == 1
    assert len(runner.app[CALLS]) == 1


async def test_without_a_credit_for_too_long_the_loop_ends(client_for, runner, monkeypatch):
    monkeypatch.setattr("busgate.adapters.rpc.client.CREDIT_MARGIN", 0.01)
    steps = Steps(credits=1)
    client = client_for(stream_stall_timeout=0.01, stream_heartbeat=0.01)
    saga = asyncio.ensure_future(client.stream(stream_request({"to": 9, "wait": 0}), steps))
    await asyncio.wait_for(saga, 30)  # ends by itself: the edge is taken to be gone
    assert len(steps.steps) == 1
    assert len(runner.app[CALLS]) == 1


async def test_the_default_wait_applies_when_the_runner_names_none(client_for, runner):
    steps = Steps()
    # echo answers its parameters: one item, "continue": true and no "wait".
    req = msgspec.structs.replace(stream_request({"list": [1], "continue": True}), path="echo")
    saga = asyncio.ensure_future(client_for(stream_wait=3600).stream(req, steps))
    await steps.arrived.get()
    steps.cancelled.set()
    await asyncio.wait_for(saga, 10)
    assert len(runner.app[CALLS]) == 1  # with no pause, a second call would have started


async def test_long_pauses_send_keepalive_steps(client_for, runner):
    steps = Steps()
    saga = asyncio.ensure_future(
        client_for(stream_heartbeat=0.02).stream(stream_request({"to": 2, "wait": 60000}), steps)
    )
    first = await steps.arrived.get()
    keepalives = [await steps.arrived.get() for _ in range(2)]
    steps.cancelled.set()
    await asyncio.wait_for(saga, 10)
    assert first["items"] == [b"1"]
    assert keepalives == [{"items": [], "next": None, "last": False, "error": None}] * 2
    assert len(runner.app[CALLS]) == 1


async def test_keepalives_need_a_credit_too(client_for, runner):
    steps = Steps(credits=3)
    saga = asyncio.ensure_future(
        client_for(stream_heartbeat=0.01).stream(stream_request({"to": 2, "wait": 60000}), steps)
    )
    # One step and two keepalives use the window; then the pause goes on silently.
    arrived = [await steps.arrived.get() for _ in range(3)]
    assert [s["items"] for s in arrived] == [[b"1"], [], []]
    assert not steps.may_step()
    steps.credits.grant(4)
    assert (await steps.arrived.get())["items"] == []  # keepalives resume
    steps.cancelled.set()
    await asyncio.wait_for(saga, 10)
    assert len(runner.app[CALLS]) == 1


async def test_a_runner_error_is_the_last_step(client_for, runner):
    steps = Steps()
    body = {"to": 9, "batch": 2, "wait": 0, "fail_at": 3}
    await client_for().stream(stream_request(body), steps)
    assert [s["items"] for s in steps.steps] == [[b"1", b"2"], []]
    failed = steps.steps[-1]
    assert failed["last"] is True
    assert isinstance(failed["error"], errors.UpstreamError)
    assert "500" in failed["error"].message


async def test_a_runner_5xx_body_stays_out_of_the_error(client_for, caplog):
    steps = Steps()
    body = {"status": 503, "message": "db password=hunter2 at /srv/app.py:12"}
    req = msgspec.structs.replace(stream_request(body), path="fail")
    with caplog.at_level("WARNING", logger="busgate.adapter.rpc"):
        await client_for().stream(req, steps)
    (failed,) = steps.steps
    assert isinstance(failed["error"], errors.UpstreamError)
    assert failed["error"].message == "runner of system 'demo' answered 503"
    assert "hunter2" not in failed["error"].to_wire().message
    assert "hunter2" in caplog.text  # the detail is for operators


async def test_a_runner_4xx_keeps_its_status_and_says_why(client_for):
    steps = Steps()
    await client_for().stream(stream_request({"to": "ten"}), steps)
    (failed,) = steps.steps
    assert failed["last"] is True
    assert isinstance(failed["error"], errors.RunnerRefused)
    assert failed["error"].to_wire().status == 400
    assert "parameter 'to' must be an integer" in failed["error"].message


async def test_an_answer_that_is_no_saga_step_is_an_error(client_for):
    steps = Steps()
    req = msgspec.structs.replace(stream_request({"list": "not a list"}), path="echo")
    await client_for().stream(req, steps)
    (failed,) = steps.steps
    assert failed["last"] is True
    assert isinstance(failed["error"], errors.UpstreamError)
    assert "non-saga" in failed["error"].message


def test_cursors_become_text():
    assert cursor_text(None) is None
    assert cursor_text("abc") == "abc"
    assert cursor_text(4) == "4"
    assert cursor_text({"page": 2}) == '{"page":2}'
