"""Commands survive faults, with real processes: a command adapter SIGKILLed under load (its
unacknowledged commands go to the other adapter), on NATS and Kafka; and 2,000 commands at a
steady rate while nats-server restarts with JetStream on disk (every 202 is executed)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp
import pytest

from busgate.brokers import Broker, NatsServer, free_port, wait_for_port
from busgate.cli import DEV_CONFIG

pytestmark = pytest.mark.e2e

COMMAND_ENV = {
    "BUSGATE__COMMANDS__BACKOFF": "0.05",
    "BUSGATE__COMMANDS__MAX_BACKOFF": "0.5",
    "BUSGATE__COMMANDS__ACK_WAIT": "2",
    "BUSGATE__COMMANDS__MAX_ATTEMPTS": "10",
    "BUSGATE_TOKEN_SECRET": "x" * 48,
}


class Procs:
    """busgate processes (runner, adapters, edge) on one broker, killed at the end."""

    def __init__(self, bus_url: str) -> None:
        self.runner_port, self.edge_port = free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BUSGATE__")}
        self.env |= COMMAND_ENV | {
            "BUSGATE__GATEWAY__BUS": bus_url,
            "BUSGATE__GATEWAY__LISTEN": f"127.0.0.1:{self.edge_port}",
            "BUSGATE__SYSTEMS__DEMO__BASE_URL": f"http://127.0.0.1:{self.runner_port}/api/demo",
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "busgate", *args], env=self.env)
        self.procs.append(proc)
        return proc

    def adapter(self) -> subprocess.Popen[bytes]:
        return self.spawn("adapter", "--config", str(DEV_CONFIG), "--system", "demo")

    def start(self, adapters: int = 2) -> list[subprocess.Popen[bytes]]:
        runner = self.spawn("runner", "rpc", "--listen", f"127.0.0.1:{self.runner_port}")
        wait_for_port("127.0.0.1", self.runner_port, 30, runner)
        started = [self.adapter() for _ in range(adapters)]
        edge = self.spawn("edge", "--config", str(DEV_CONFIG))
        wait_for_port("127.0.0.1", self.edge_port, 30, edge)
        return started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    @property
    def runner(self) -> str:
        return f"http://127.0.0.1:{self.runner_port}"

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def nats() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server


async def adapters_ready(http: aiohttp.ClientSession, procs: Procs, count: int) -> None:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            async with http.get(f"{procs.url}/readyz") as resp:
                if len((await resp.json())["systems"]["demo"]) >= count:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"{count} adapters not ready")


async def command_group_stable(broker: Broker, members: int, within: float = 30) -> None:
    """Until the adapters' command group (``busgate.adapter.demo.cmd``) has ``members``
    members and is Stable: each holds its partitions (a join takes seconds on Kafka)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=f"{broker.host}:{broker.port}")
    await admin.start()
    try:
        async with asyncio.timeout(within):
            while True:
                (described,) = await admin.describe_consumer_groups(["busgate.adapter.demo.cmd"])
                _, _, state, _, _, joined = described.groups[0]
                if state == "Stable" and len(joined) == members:
                    return
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def issue(http: aiohttp.ClientSession, procs: Procs, payload: dict) -> str | None:
    """The command id of a 202, None for a 503 (never anything else)."""
    try:
        async with http.post(f"{procs.url}/api/command/orders/load", json=payload) as resp:
            if resp.status == 503:
                return None
            assert resp.status == 202, await resp.text()
            return str((await resp.json())["commandId"])
    except aiohttp.ClientConnectionError:
        return None


async def executed(http: aiohttp.ClientSession, procs: Procs) -> set[str]:
    async with http.get(f"{procs.runner}/calls") as resp:
        return {c["commandId"] for c in await resp.json() if c.get("commandId")}


async def all_executed(http, procs, accepted: set[str], within: float) -> set[str]:
    end = time.monotonic() + within
    while True:
        seen = await executed(http, procs)
        if accepted <= seen or time.monotonic() > end:
            return seen
        await asyncio.sleep(0.5)


async def steady(http, procs, count: int, rate: float, payload: dict, fault=None) -> set[str]:
    """``count`` commands at ``rate`` per second; ``fault()`` runs at the halfway mark."""
    tasks: list[asyncio.Task[str | None]] = []
    started = time.monotonic()
    for i in range(count):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if i == count // 2 and fault is not None:
            fault()
        tasks.append(asyncio.create_task(issue(http, procs, payload)))
    return {cid for cid in await asyncio.gather(*tasks) if cid is not None}


@pytest.mark.parametrize(
    "transport",
    [pytest.param("nats", marks=pytest.mark.nats), pytest.param("kafka", marks=pytest.mark.kafka)],
)
async def test_sigkill_of_a_command_adapter_loses_no_command(transport, request):
    if transport == "nats":
        broker = request.getfixturevalue("nats")
    else:
        from busgate.brokers import TansuBroker

        broker = TansuBroker().start()
        request.addfinalizer(broker.stop)
    procs = Procs(broker.url)
    try:
        victim, _ = procs.start(adapters=2)
        async with aiohttp.ClientSession() as http:
            await adapters_ready(http, procs, 2)
            if transport == "kafka":  # both command consumers in the group, partitions given
                await command_group_stable(broker, members=2)
            accepted = await steady(
                http,
                procs,
                300,
                60.0,
                {"ms": 300},
                fault=lambda: victim.send_signal(signal.SIGKILL),
            )
            seen = await all_executed(http, procs, accepted, within=60)
            async with http.get(f"{procs.runner}/calls") as resp:
                ids = [c["commandId"] for c in await resp.json() if c.get("commandId")]
        assert victim.poll() == -signal.SIGKILL
        redelivered = {cid for cid in ids if ids.count(cid) > 1}
        assert redelivered, "the killed adapter held no command: the test proved nothing"
        assert len(accepted) >= 290, f"only {len(accepted)} of 300 got a 202"
        lost = accepted - seen
        assert not lost, f"{len(lost)} accepted commands never executed"
        print(
            f"\n{transport}: SIGKILL under load: {len(accepted)} accepted, all executed; "
            f"{len(redelivered)} redelivered from the killed adapter"
        )
    finally:
        procs.stop()


@pytest.mark.nats
async def test_2000_commands_while_nats_server_restarts(nats):
    procs = Procs(nats.url)
    try:
        procs.start(adapters=1)
        async with aiohttp.ClientSession() as http:
            await adapters_ready(http, procs, 1)

            def restart() -> None:
                nats.stop()  # SIGTERM: JetStream flushes to disk
                nats.start()

            started = time.monotonic()
            accepted = await steady(http, procs, 2000, 100.0, {}, fault=restart)
            took = time.monotonic() - started
            seen = await all_executed(http, procs, accepted, within=90)
        lost = accepted - seen
        extra = seen - accepted
        print(
            f"\nnats restart: 2000 sent over {took:.1f} s, {len(accepted)} got 202, "
            f"{len(seen)} distinct executed, lost {len(lost)}, executed without a 202 {len(extra)}"
        )
        assert not lost, f"{len(lost)} accepted commands never executed"
        assert len(accepted) > 1500
    finally:
        procs.stop()
