"""``busgate command``, ``busgate send`` and ``busgate tail`` as separate processes against the
dev stack (broker, runner, adapter and edge as processes), on NATS and on Kafka: a command
from the command line is executed by the runner; a message from ``send`` lands and a running
``tail`` prints it; ``tail commands`` prints a command; failures exit non-zero with a message.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from busgate.brokers import free_port
from busgate.cli import DEV_CONFIG
from tests.e2e.test_commands import runner_calls, until_status
from tests.stack import DevStack, dev_stack, start_tail

pytestmark = pytest.mark.e2e

LINE_WAIT = 30.0


@pytest.fixture(scope="module", params=["nats", "kafka"])
def stack(request):
    request.applymarker(getattr(pytest.mark, request.param))
    with dev_stack(request.param) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def cli_env(stack: DevStack, bus: str | None = None) -> dict[str, str]:
    """The dev stack's config as ``busgate dev`` gives it to its edge."""
    env = {**os.environ, "BUSGATE__GATEWAY__BUS": bus or stack.parts["bus"]}
    if stack.bus == "nats":
        env["BUSGATE__SERVICES__EVENTS__JETSTREAM"] = "true"
        env["BUSGATE__SERVICES__EVENTS__STREAM"] = "EVENTS"
    return env


async def busgate(
    stack: DevStack, *args: str, bus: str | None = None
) -> tuple[int, dict[str, Any] | None, str]:
    """Run ``busgate ARGS --config DEV``: (exit status, its JSON line, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "busgate",
        *args,
        "--config",
        str(DEV_CONFIG),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(stack, bus),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, json.loads(out) if out.strip() else None, err.decode()


class Tail:
    """A running ``busgate tail``; ``line()`` awaits its next output line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), LINE_WAIT)
        assert raw, "busgate tail ended"
        found: dict[str, Any] = json.loads(raw)
        return found

    async def stop(self) -> int:
        """Ctrl-C, as an operator stops it."""
        self.proc.send_signal(signal.SIGINT)
        return await asyncio.wait_for(self.proc.wait(), 20)


@pytest.fixture
async def tail(stack: DevStack) -> AsyncIterator[Any]:
    started: list[Tail] = []

    async def start(what: str) -> Tail:
        running = Tail(await start_tail(what, cli_env(stack), LINE_WAIT))
        started.append(running)
        return running

    yield start
    for running in started:
        if running.proc.returncode is None:
            running.proc.kill()
            await running.proc.wait()


async def test_a_command_from_the_command_line_is_executed(stack, http):
    status, printed, err = await busgate(
        stack, "command", "orders/create", "--data", '{"sku": "CLI-1"}'
    )
    assert status == 0, err
    assert printed is not None and printed["status"] == "accepted"
    command_id = printed["commandId"]
    done = await until_status(http, stack, command_id, "done")
    assert done["attempts"] == 1
    calls = await runner_calls(http, stack, command_id)
    assert len(calls) == 1


async def test_tail_prints_what_send_published(stack, tail):
    following = await tail("orders.created")
    status, landed, err = await busgate(
        stack, "send", "events", "orders.created", "42", "--data", '{"id": 42}'
    )
    assert status == 0, err
    assert landed is not None
    if stack.bus == "nats":
        assert landed["stream"] == "EVENTS" and landed["seq"] >= 1
    else:
        assert landed["topic"] == "orders.created" and landed["offset"] >= 0
    line = await following.line()
    assert line["data"] == {"id": 42}
    assert line["headers"]["content-type"] == "application/json"
    assert line["headers"]["busgate-request-id"].startswith("cli-")
    if stack.bus == "kafka":
        assert (line["partition"], line["offset"]) == (landed["partition"], landed["offset"])
        assert line["key"] == 42
    else:
        assert line["subject"] == "orders.created"
        assert line["headers"]["busgate-key"] == "42"
    assert await following.stop() == 0


async def test_tail_commands_prints_the_envelope(stack, tail):
    following = await tail("commands")
    status, printed, err = await busgate(
        stack, "command", "orders/create", "--data", '{"sku": "CLI-2"}'
    )
    assert status == 0, err
    assert printed is not None
    command_id = printed["commandId"]
    line = await following.line()
    while line.get("message", {}).get("id") != command_id:  # the adapter's own, if any
        line = await following.line()
    message = line["message"]
    assert message["type"] == "Request"
    assert (message["kind"], message["system"], message["path"]) == (
        "command",
        "demo",
        "orders/create",
    )
    assert message["body"] == {"sku": "CLI-2"}
    assert message["traceparent"].startswith("00-")
    assert line["headers"]["busgate-request-id"] == command_id
    assert line["headers"]["busgate-kind"] == "command"
    assert await following.stop() == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("send", "nope", "orders.created", "1", "--data", "{}"), "unknown service 'nope'"),
        (("send", "events", "payments.x", "1", "--data", "{}"), "may not send to topic"),
        (("send", "events", "orders.x", "k", "--mod", "2", "--data", "{}"), "KEY must be"),
        (("command", "orders/create", "--data", "not json"), "--data must be JSON"),
        (("command", "a/../b", "--data", "{}"), "without '.' or '..'"),
        (("command", "orders/create", "--data", "@/nonexistent/x"), "cannot read"),
    ],
)
async def test_refusals_exit_1_with_a_message(stack, args, says):
    status, printed, err = await busgate(stack, *args)
    assert (status, printed) == (1, None)
    assert says in err
    assert "Traceback" not in err


async def test_bus_unreachable_exits_1_and_publishes_nothing(stack):
    dead = f"{stack.bus}://127.0.0.1:{free_port()}"
    for args in (
        ("command", "orders/create", "--data", "{}", "--timeout", "5"),
        ("send", "events", "orders.created", "1", "--data", "{}", "--timeout", "5"),
    ):
        status, printed, err = await busgate(stack, *args, bus=dead)
        assert (status, printed) == (1, None), err
        assert "not published" in err
        assert "Traceback" not in err
