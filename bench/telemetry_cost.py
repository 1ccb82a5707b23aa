"""Micro-benchmark: the edge's CPU per call with telemetry off, at 0 % sampling, with metrics,
and fully traced (spans exported to an in-memory sink instead of a broker).

    python -m bench.telemetry_cost [--calls 3000] [--rounds 5]

One process, one event loop: an aiohttp client calls an edge app whose bus is in memory
(``tests.edge.memory_bus``), so the figures are the edge's own work plus a constant client
share; the differences between variants are what telemetry costs. Variants alternate and the
best round of each is kept (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import msgspec
from aiohttp.test_utils import TestClient, TestServer

from busgate.bus import trace_export
from busgate.bus.base import Responder
from busgate.bus.trace_export import TraceSink
from busgate.contracts.config import Config, Telemetry, parse
from busgate.contracts.wire import Reply, Request
from busgate.edge.app import create_app
from tests.edge.memory_bus import MemoryBus

VARIANTS: dict[str, dict[str, object]] = {
    "off": {},
    "sampling 0": {"sampling": 0.0, "otlp_endpoint": "http://127.0.0.1:9/v1/traces"},
    "metrics": {"metrics": True},
    "sampling 1 (bus export)": {"sampling": 1.0},
}


class NullSink(TraceSink):
    """Encodes and drops: the export's CPU without a broker."""

    async def publish(self, bucket: str, data: bytes) -> None:
        pass


def config(telemetry: dict[str, object]) -> Config:
    base = parse(
        {
            "gateway": {"id": "b"},
            "systems": {"demo": {"type": "rpc", "base_url": "http://127.0.0.1:9"}},
            "channels": {"demo": {"system": "demo"}},
        }
    )
    return msgspec.structs.replace(base, telemetry=msgspec.convert(telemetry, Telemetry))


async def echo(req: Request, responder: Responder) -> None:
    await responder.reply(Reply(id=req.id, body=req.body))


async def measure(telemetry: dict[str, object], calls: int) -> float:
    """CPU µs per call."""
    bus = MemoryBus()
    await bus.serve(["demo"], echo)
    client = TestClient(TestServer(create_app(config(telemetry), bus=bus)))
    await client.start_server()
    try:
        for _ in range(200):  # warm-up
            await (await client.post("/api/request/demo/echo", data=b"{}")).read()
        start = time.process_time()
        for _ in range(calls):
            resp = await client.post(
                "/api/request/demo/echo", data=b"{}", headers={"Content-Type": "application/json"}
            )
            await resp.read()
        return (time.process_time() - start) / calls * 1e6
    finally:
        await client.close()


async def main(calls: int, rounds: int) -> None:
    trace_export.open_sink = lambda *a, **kw: NullSink()  # type: ignore[assignment]
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, telemetry in VARIANTS.items():
            cost = await measure(telemetry, calls)
            best[name] = min(best.get(name, cost), cost)
    off = best["off"]
    print(f"edge CPU per call (client included), best of {rounds} x {calls} calls:")
    for name, cost in best.items():
        print(f"  {name:<24} {cost:7.1f} µs   {cost - off:+6.1f} µs vs off   {off / cost:.3f} x")


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.telemetry_cost", description=__doc__)
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    asyncio.run(main(a.calls, a.rounds))
