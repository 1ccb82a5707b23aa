"""What idle SSE streams cost one edge node, and how late a step reaches its client.

Starts nats-server, the sample runner, one adapter and one edge as separate processes, then:

1. opens idle streams (``count`` with a one-hour wait: one event, then only heartbeats) in
   stages and reads the edge's RSS from ``/proc/PID/status`` at each stage;
2. runs short fast sagas (``batch=1``, ``wait`` ms) while a spy on the bus stamps each
   StreamStep as it appears on the edge's reply subject, and the client stamps each event as
   it is read: the difference is the step → event delay through the edge (same clock,
   one machine). Measured with no idle streams and with the largest stage open.

    .venv/bin/python -m bench.sse_idle --stages 2000,10000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats

from busgate.brokers import NatsServer, free_port, wait_for_port
from busgate.contracts.codec import decode
from busgate.contracts.wire import StreamStep

IDLE_PATH = "/api/stream/demo/count?to=2&wait=3600000"
CONFIG = """
[gateway]
id = "sse"
bus = "{bus}"
listen = "127.0.0.1:{port}"
max_streams = 100000
return_ids = "always"
max_streams_per_client = 100000
[systems.demo]
type = "rpc"
base_url = "http://127.0.0.1:{runner}/api/demo"
[channels.demo]
system = "demo"
"""


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def stack() -> Iterator[tuple[str, int, int, str]]:
    """(edge URL, edge pid, adapter pid, NATS URL) of a fresh stack."""
    procs: list[subprocess.Popen[bytes]] = []
    with NatsServer() as broker, tempfile.TemporaryDirectory() as tmp:
        try:
            runner, port = free_port(), free_port()
            config = Path(tmp) / "busgate.toml"
            config.write_text(CONFIG.format(bus=broker.url, port=port, runner=runner))
            env = {k: v for k, v in os.environ.items() if not k.startswith("BUSGATE__")}

            def spawn(*args: str) -> subprocess.Popen[bytes]:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "busgate", "--log-level", "WARNING", *args],
                        env=env,
                    )
                )
                return procs[-1]

            wait_for_port(
                "127.0.0.1", runner, 30, spawn("runner", "rpc", "--listen", f"127.0.0.1:{runner}")
            )
            adapter = spawn("adapter", "--config", str(config))
            edge = spawn("edge", "--config", str(config))
            wait_for_port("127.0.0.1", port, 30, edge)
            url = f"http://127.0.0.1:{port}"
            end = time.monotonic() + 30
            while b'"demo":["' not in urllib.request.urlopen(f"{url}/readyz").read():
                if time.monotonic() > end:
                    raise TimeoutError("no adapter announced itself")
                time.sleep(0.1)
            yield url, edge.pid, adapter.pid, broker.url
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                proc.wait(30)


retried = [0]


async def open_idle(host: str, port: int, count: int, held: list[asyncio.StreamWriter]) -> None:
    """Open ``count`` streams and read each one's first event; keep them open."""
    gate = asyncio.Semaphore(100)

    async def one() -> None:
        for attempt in range(3):  # the burst of connects may overflow the listen backlog
            async with gate:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                    writer.write(f"GET {IDLE_PATH} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                    head = await reader.readuntil(b"\r\n\r\n")
                    if b" 200 " not in head.split(b"\r\n", 1)[0]:
                        raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
                    await reader.readuntil(b"\n\n")  # the chunk with the first event
                    held.append(writer)
                    return
                except ConnectionError:
                    if attempt == 2:
                        raise
                    retried[0] += 1

    await asyncio.gather(*(one() for _ in range(count)))


async def delays(url: str, nats_url: str, sagas: int, steps: int, wait_ms: int) -> list[float]:
    """Seconds from each step's appearance on the bus to its event's arrival at the client."""
    on_bus: dict[tuple[str, str], float] = {}

    async def spy(msg: nats.aio.msg.Msg) -> None:
        now = time.time()
        step = decode(msg.data)
        if isinstance(step, StreamStep) and step.items:
            on_bus[(step.id, step.items[-1].decode())] = now

    nc = await nats.connect(nats_url)
    await nc.subscribe("busgate.reply.>", cb=spy)
    host, port = url.removeprefix("http://").split(":")
    seen: list[tuple[str, str, float]] = []

    async def saga() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        path = f"/api/stream/demo/count?to={steps}&wait={wait_ms}"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        request_id = next(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("x-request-id:")
        )
        while True:
            line = (await reader.readline()).decode()
            if line.startswith("data: "):
                value = line[6:].strip()
                if value == "{}":
                    break
                seen.append((request_id, value, time.time()))
        writer.close()

    await asyncio.gather(*(saga() for _ in range(sagas)))
    await nc.drain()
    return [at - on_bus[(rid, value)] for rid, value, at in seen if (rid, value) in on_bus]


def summary(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100)
    return (
        f"n={len(ms)} p50={q[49]:.2f} ms p90={q[89]:.2f} ms p99={q[98]:.2f} ms max={ms[-1]:.2f} ms"
    )


async def main(stages: list[int], sagas: int, steps: int, wait_ms: int, rounds: int) -> None:
    with stack() as (url, edge_pid, adapter_pid, nats_url):
        host, port = url.removeprefix("http://").split(":")
        await asyncio.sleep(1)
        base = rss_mb(edge_pid)
        print(f"edge RSS with no streams: {base:.1f} MB (adapter {rss_mb(adapter_pid):.1f} MB)")
        print(
            "delay, no idle streams:", summary(await delays(url, nats_url, sagas, steps, wait_ms))
        )
        held: list[asyncio.StreamWriter] = []
        for stage in stages:
            started = time.monotonic()
            await open_idle(host, int(port), stage - len(held), held)
            await asyncio.sleep(2)  # let the edge settle (freed buffers, GC)
            rss = rss_mb(edge_pid)
            print(
                f"{len(held):>6} idle streams: edge RSS {rss:.1f} MB "
                f"(+{(rss - base) * 1024 / len(held):.1f} KB/stream), adapter RSS "
                f"{rss_mb(adapter_pid):.1f} MB; opened in {time.monotonic() - started:.1f} s "
                f"({retried[0]} connects retried)"
            )
        for _ in range(rounds):
            edge_cpu, adapter_cpu, started = cpu_s(edge_pid), cpu_s(adapter_pid), time.monotonic()
            got = summary(await delays(url, nats_url, sagas, steps, wait_ms))
            took = time.monotonic() - started
            print(
                f"delay, {len(held)} idle streams: {got}; over {took:.1f} s the edge used "
                f"{(cpu_s(edge_pid) - edge_cpu) / took:.0%} CPU, the adapter "
                f"{(cpu_s(adapter_pid) - adapter_cpu) / took:.0%}"
            )
        for writer in held:
            writer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", default="2000,10000")
    parser.add_argument("--sagas", type=int, default=20, help="concurrent fast sagas")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--wait", type=int, default=20, help="ms between steps")
    parser.add_argument("--rounds", type=int, default=3, help="delay runs at the last stage")
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    stages = sorted(int(s) for s in args.stages.split(","))
    asyncio.run(main(stages, args.sagas, args.steps, args.wait, args.rounds))
