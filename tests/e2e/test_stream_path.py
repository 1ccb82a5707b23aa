"""``/api/stream`` end to end: client → edge → bus → adapter saga loop → runner, separate
processes (``busgate dev``), over NATS and over Kafka."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import uuid
from pathlib import Path

import pytest

from busgate.brokers import free_port
from busgate.bus import from_url
from busgate.contracts.codec import decode
from busgate.contracts.wire import Cancel
from tests.e2e.conftest import E2E_ENV
from tests.sse_client import collect, events
from tests.stack import dev_stack

pytestmark = pytest.mark.e2e

WAIT = 0.3
STALL = 3.0
"""``gateway.stream_stall_timeout`` of these stacks: short, so a stalled client is dropped
within the test."""
STEP = 256 * 1024
"""Bytes per step of the backpressure tests' ``bulk`` saga: four fill the default 1 MiB
``stream_buffer_bytes``."""


@pytest.fixture(scope="module", params=["nats", "kafka"])
def stack(request):
    """As ``tests.e2e.conftest.stack``, with a short stall timeout."""
    request.applymarker(getattr(pytest.mark, request.param))
    env = {
        **E2E_ENV,
        "BUSGATE__SYSTEMS__DOWN__BASE_URL": f"http://127.0.0.1:{free_port()}/x",
        "BUSGATE__GATEWAY__STREAM_STALL_TIMEOUT": str(STALL),
    }
    with dev_stack(request.param, env=env) as running:
        yield running


class Cancels:
    """Every Cancel on the stack's bus, seen by a node of its own on the control subject."""

    def __init__(self) -> None:
        self.seen: dict[str, asyncio.Event] = {}
        self.arrived: asyncio.Queue[str] = asyncio.Queue()
        """The ids of the Cancels, in the order they came."""

    def of(self, request_id: str) -> asyncio.Event:
        return self.seen.setdefault(request_id, asyncio.Event())

    def on_control(self, data: bytes) -> None:
        msg = decode(data)
        if isinstance(msg, Cancel):
            self.of(msg.id).set()
            self.arrived.put_nowait(msg.id)


@pytest.fixture
async def cancels(stack):
    bus = from_url(stack.parts["bus"], node=f"watch-{uuid.uuid4().hex[:6]}")
    seen = Cancels()
    bus._on_control = seen.on_control  # type: ignore[method-assign]
    await bus.connect()
    try:
        yield seen
    finally:
        await bus.close()


def edge_pid(stack) -> int:
    """The edge process among ``busgate dev``'s children."""
    children = Path(f"/proc/{stack.proc.pid}/task/{stack.proc.pid}/children").read_text()
    for pid in children.split():
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"edge" in argv:
            return int(pid)
    raise AssertionError("no edge process")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid``, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


async def calls(http, stack, request_id: str) -> list[dict]:
    async with http.get(f"{stack.runner}/calls") as resp:
        return [c for c in await resp.json() if c["requestId"] == request_id]


async def tagged(http, stack, tag: str) -> list[dict]:
    """The runner's calls whose parameters carry ``tag``."""
    async with http.get(f"{stack.runner}/calls") as resp:
        return [c for c in await resp.json() if (c["parameters"] or {}).get("tag") == tag]


async def test_the_readme_example_streams_in_steps_then_ends(stack, http):
    url = f"{stack.url}/api/stream/demo/count?to=5&batch=2&wait={int(WAIT * 1000)}"
    async with http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        got = await collect(resp)
    assert [(e.kind, e.data, e.id) for e in got] == [
        ("message", "1", None),
        ("message", "2", "2"),
        ("message", "3", None),
        ("message", "4", "4"),
        ("message", "5", "5"),
        ("end", "{}", None),
    ]
    # The adapter waits between steps. Timed at the runner, so bus jitter cannot hide it.
    steps = [c["at"] for c in await calls(http, stack, resp.headers["X-Request-Id"])]
    assert len(steps) == 3
    assert all(b - a >= WAIT * 0.9 for a, b in itertools.pairwise(steps))
    # Streamed, not buffered: the first step's events reached the client before the runner
    # was even asked for the last step.
    assert got[1].at < steps[2]


async def test_last_event_id_resumes_after_the_last_step_seen(stack, http):
    url = f"{stack.url}/api/stream/demo/count?to=5&batch=2&wait=0"
    async with http.get(url, headers={"Last-Event-ID": "4"}) as resp:
        got = await collect(resp)
        request_id = resp.headers["X-Request-Id"]
    assert [(e.kind, e.data) for e in got] == [("message", "5"), ("end", "{}")]
    (call,) = await calls(http, stack, request_id)
    assert call["parameters"]["previous"] == "4"


async def test_a_disconnect_stops_the_saga_before_its_next_call(stack, http, cancels):
    wait_ms = 1500
    url = f"{stack.url}/api/stream/demo/count?to=50&wait={wait_ms}"
    gone = await http.get(url)
    gone_id = gone.headers["X-Request-Id"]
    assert (await anext(events(gone))).data == "1"
    gone.close()
    # The edge tells the adapter: a Cancel for this stream crosses the bus.
    async with asyncio.timeout(30):
        await cancels.of(gone_id).wait()
    # A witness started after the Cancel with the same wait: when its third step arrives,
    # two of its pauses have passed since the first saga's pause began, so an uncancelled
    # first saga would have called the runner again by then.
    async with http.get(url.replace("to=50", "to=3")) as witness:
        got = await collect(witness)
    assert [e.data for e in got] == ["1", "2", "3", "{}"]
    assert len(await calls(http, stack, gone_id)) == 1


async def test_a_client_that_stops_reading_stops_the_runner_then_is_dropped(stack, http, cancels):
    """Backpressure end to end: a client that reads nothing on a fast stream of large steps
    holds the edge to a bounded buffer and the runner to a few calls; after the stall
    timeout it is disconnected and its saga cancelled."""
    pid = edge_pid(stack)
    reset_peak(pid)
    before = memory(pid)["VmRSS"]
    tag = uuid.uuid4().hex
    host, port = stack.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a tiny window
    sock.connect((host, int(port)))
    try:
        path = f"/api/stream/demo/bulk?size={STEP}&wait=0&tag={tag}"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())

        async with asyncio.timeout(30):  # until it is dropped, after the stall timeout
            while True:
                cancelled = await cancels.arrived.get()
                made = await tagged(http, stack, tag)
                if made and made[0]["requestId"] == cancelled:
                    break
        peak = memory(pid)["VmHWM"]
        # Nothing read: the socket buffers and the edge's window (four steps) hold all the
        # runner made; without backpressure it is called hundreds of times a second.
        assert len(made) < 64, len(made)
        assert peak - before < 50 * 1024 * 1024, (before, peak)

        # The connection is closed: what the socket buffers held, then the end.
        def drain() -> int:
            sock.settimeout(30)
            got = 0
            try:
                while chunk := sock.recv(1 << 16):
                    got += len(chunk)
            except ConnectionResetError:
                pass
            return got

        received = await asyncio.to_thread(drain)
        assert received < len(made) * (STEP + 100)
    finally:
        sock.close()
    # The saga was cancelled, not only paused: a whole stream later, no call came.
    async with http.get(f"{stack.url}/api/stream/demo/count?to=3&wait=0") as witness:
        assert [e.data for e in await collect(witness)] == ["1", "2", "3", "{}"]
    assert len(await tagged(http, stack, tag)) == len(made)


async def test_a_reading_client_gets_every_large_step_in_order(stack, http):
    steps = 40
    url = f"{stack.url}/api/stream/demo/bulk?size={STEP}&to={steps}&wait=0"
    async with http.get(url) as resp:
        got = await collect(resp)
    assert [e.id for e in got[:-1]] == [str(n) for n in range(1, steps + 1)]
    assert all(json.loads(e.data) == "x" * STEP for e in got[:-1])
    assert got[-1].kind == "end"


async def test_failures_before_the_first_step_are_json_errors(stack, http):
    async with http.get(f"{stack.url}/api/stream/missing/count") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    async with http.get(f"{stack.url}/api/stream/down/count") as resp:
        assert resp.status == 502
        error = (await resp.json())["error"]
        assert error["code"] == "upstream_unreachable"
        assert error["requestId"] == resp.headers["X-Request-Id"]


async def test_a_runner_refusing_the_first_step_passes_its_4xx_through(stack, http):
    async with http.get(f"{stack.url}/api/stream/demo/count?to=ten") as resp:
        assert resp.status == 400
        assert resp.content_type == "application/json"
        error = (await resp.json())["error"]
    assert error["code"] == "runner_refused"
    assert "parameter 'to' must be an integer" in error["message"]


async def test_a_failure_mid_stream_is_an_error_event(stack, http):
    url = f"{stack.url}/api/stream/demo/count?to=9&batch=2&wait=0&fail_at=3"
    async with http.get(url) as resp:
        got = await collect(resp)
    assert [e.kind for e in got] == ["message", "message", "error"]
    assert '"code":"upstream_error"' in got[2].data
    # The runner's 5xx body stays in the adapter's log, as on /api/request.
    assert "count failed on purpose" not in got[2].data
