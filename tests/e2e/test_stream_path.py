"""``/api/stream`` end to end: client → edge → bus → adapter saga loop → runner, separate
processes (``busgate dev``), over NATS and over Kafka."""

from __future__ import annotations

import itertools

import pytest

from tests.sse_client import collect, events

pytestmark = pytest.mark.e2e

WAIT = 0.3


async def calls(http, stack, request_id: str) -> list[dict]:
    async with http.get(f"{stack.runner}/calls") as resp:
        return [c for c in await resp.json() if c["requestId"] == request_id]


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


async def test_a_disconnect_stops_the_saga_before_its_next_call(stack, http):
    wait_ms = 1500
    url = f"{stack.url}/api/stream/demo/count?to=50&wait={wait_ms}"
    gone = await http.get(url)
    gone_id = gone.headers["X-Request-Id"]
    assert (await anext(events(gone))).data == "1"
    gone.close()
    # A witness started afterwards with the same wait: when its third step arrives, two of
    # its pauses have passed since the first saga's pause began, so an uncancelled first
    # saga would have called the runner again by then.
    async with http.get(url.replace("to=50", "to=3")) as witness:
        got = await collect(witness)
    assert [e.data for e in got] == ["1", "2", "3", "{}"]
    assert len(await calls(http, stack, gone_id)) == 1


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
