"""Micro-benchmark: CPU per call of the whole request path (edge and adapter) with telemetry
off, at 0 % sampling, with metrics, and fully traced (spans exported to a sink that encodes
and drops them instead of a broker).

    python -m bench.telemetry_cost [--calls 3000] [--rounds 5]

One process, one event loop: an aiohttp client calls an edge app and an adapter service
that share an in-memory bus (``tests.edge.memory_bus``); the runner (``busgate runner rpc``)
is a process of its own, so its work is not counted. The figures are the edge's and the
adapter's work plus a constant client share; the differences between variants are what
telemetry costs them. Variants alternate and the best round of each is kept (the machine is
shared). For counts that do not depend on the machine's load, run one variant under
callgrind twice, with two call counts, and divide the difference:

    valgrind --tool=callgrind python -m bench.telemetry_cost --only "sampling 1" --calls 700
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
from aiohttp.test_utils import TestClient, TestServer

import busgate.adapters.service as service
from busgate.bus import trace_export
from busgate.bus.trace_export import TraceSink
from busgate.contracts.config import Config, Telemetry, parse
from busgate.edge.app import create_app
from busgate.gc_tuning import settle
from tests.edge.memory_bus import MemoryBus

VARIANTS: dict[str, dict[str, object]] = {
    "off": {},
    "sampling 0": {"sampling": 0.0, "otlp_endpoint": "http://127.0.0.1:9/v1/traces"},
    "metrics": {"metrics": True},
    "sampling 1": {"sampling": 1.0},
}
HEADERS = {"Content-Type": "application/json"}


class NullSink(TraceSink):
    """Encodes and drops: the export's CPU without a broker."""

    async def publish(self, bucket: str, data: bytes) -> None:
        pass


class QuietBus(MemoryBus):
    """A memory bus that keeps nothing it sent (the tests' keeps all, for assertions)."""

    async def _send(self, dest: str, data: bytes, headers: dict[str, str], *, reply: str = ""):
        await super()._send(dest, data, headers, reply=reply)
        self.sent.clear()


def config(telemetry: dict[str, object], runner: int) -> Config:
    base = parse(
        {
            "gateway": {"id": "b", "bus": "nats://127.0.0.1:9"},  # replaced by the memory bus
            "systems": {"demo": {"type": "rpc", "base_url": f"http://127.0.0.1:{runner}/api/demo"}},
            "channels": {"demo": {"system": "demo"}},
        }
    )
    return msgspec.structs.replace(base, telemetry=msgspec.convert(telemetry, Telemetry))


@contextlib.asynccontextmanager
async def runner() -> AsyncIterator[int]:
    """``busgate runner rpc`` on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    busgate = str(Path(sys.executable).with_name("busgate"))
    proc = await asyncio.create_subprocess_exec(
        busgate, "runner", "rpc", "--listen", f"127.0.0.1:{port}"
    )
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            await asyncio.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        await proc.wait()


async def measure(telemetry: dict[str, object], calls: int, port: int) -> float:
    """CPU µs per call."""
    cfg = config(telemetry, port)
    bus = QuietBus()
    service.bus_.from_url = lambda *a, **kw: bus  # type: ignore[assignment]
    adapter = service.AdapterService(cfg)
    await adapter.start()
    client = TestClient(TestServer(create_app(cfg, bus=bus)))
    await client.start_server()
    try:
        for _ in range(200):  # warm-up
            resp = await client.post("/api/request/demo/echo", data=b"{}", headers=HEADERS)
            assert resp.status == 200, (resp.status, await resp.text())
            await resp.read()
        start = time.process_time()
        for _ in range(calls):
            resp = await client.post("/api/request/demo/echo", data=b"{}", headers=HEADERS)
            await resp.read()
        return (time.process_time() - start) / calls * 1e6
    finally:
        await client.close()
        await adapter.stop()


async def main(calls: int, rounds: int, only: str) -> None:
    trace_export.open_sink = lambda *a, **kw: NullSink()  # type: ignore[assignment]
    settle()  # as the edge and the adapter do once they serve
    variants = {n: v for n, v in VARIANTS.items() if not only or n == only}
    best: dict[str, float] = {}
    async with runner() as port:
        for _ in range(rounds):
            for name, telemetry in variants.items():
                cost = await measure(telemetry, calls, port)
                best[name] = min(best.get(name, cost), cost)
    gc.collect()
    off = best.get("off", 0.0)
    print(f"edge + adapter CPU per call (client included), best of {rounds} x {calls} calls:")
    for name, cost in best.items():
        vs = f"{cost - off:+6.1f} µs vs off   {off / cost:.3f} x" if off else ""
        print(f"  {name:<12} {cost:7.1f} µs   {vs}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.telemetry_cost", description=__doc__)
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", default="", help="one variant (for callgrind)")
    a = p.parse_args()
    asyncio.run(main(a.calls, a.rounds, a.only))
