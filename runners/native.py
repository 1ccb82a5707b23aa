"""The sample bus-native runner (``busgate runner native``): no adapter, FastStream on the bus.

The same sagas as the RPC sample where they make sense: ``echo``, ``meta``, ``sleep``,
``fail``, and the stream ``count``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from busgate.contracts.config import Telemetry
from busgate.contracts.errors import BadRequest, Conflict
from busgate.runners.kit import Meta, Runner, Step


def build(
    system: str = "native",
    bus: str | None = None,
    prefix: str | None = None,
    telemetry: Telemetry | None = None,
) -> Runner:
    runner = Runner(system, bus=bus, prefix=prefix, telemetry=telemetry)

    @runner.saga("echo")
    async def echo(parameters: dict[str, Any], meta: Meta) -> dict[str, Any]:
        return parameters

    @runner.saga("meta")
    async def meta_(parameters: dict[str, Any], meta: Meta) -> dict[str, Any]:
        identity = meta.identity.subject if meta.identity else None
        return {
            "requestId": meta.request_id,
            "system": meta.system,
            "channel": meta.channel,
            "path": meta.path,
            "subject": identity,
            "traceparent": meta.traceparent,
        }

    @runner.saga("sleep")
    async def sleep(parameters: dict[str, Any], meta: Meta) -> dict[str, Any]:
        seconds = float(parameters.get("seconds", 1))
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @runner.saga("fail")
    async def fail(parameters: dict[str, Any], meta: Meta) -> dict[str, Any]:
        """400 (``bad``), 409 (``conflict``), or an unhandled error (500, body hidden)."""
        kind = parameters.get("kind", "crash")
        if kind == "bad":
            raise BadRequest("you asked for a bad request")
        if kind == "conflict":
            raise Conflict("you asked for a conflict")
        raise RuntimeError("the sample runner failed on purpose")

    @runner.saga("inflight")
    async def inflight(parameters: dict[str, Any], meta: Meta) -> dict[str, Any]:
        """Calls in hand, this one included: shows that a cancelled stream let go."""
        return {"inflight": runner.inflight}

    @runner.stream("count")
    async def count(parameters: dict[str, Any], meta: Meta, previous: str | None) -> Step:
        """``{"to": N, "wait": seconds}``: one number a step, up to N (0 = for ever)."""
        n = int(previous or 0) + 1
        to = int(parameters.get("to", 5))
        more = to <= 0 or n < to
        return Step(
            items=[{"n": n}], next=str(n) if more else None, wait=float(parameters.get("wait", 0))
        )

    return runner


def run(
    system: str = "native",
    bus: str | None = None,
    prefix: str | None = None,
    telemetry: Telemetry | None = None,
) -> None:
    build(system, bus, prefix, telemetry).run()
