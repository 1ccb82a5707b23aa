"""The sample RPC runner: ``POST /api/{runner}/{saga}`` with ``{"parameters", "meta"}``.

Sagas: ``echo``, ``meta`` (the ``meta`` it got, plus its ``traceparent`` header), ``sleep``,
``fail``, ``flaky`` (answers ``status``, default 503, to the first ``failures`` calls with a
given ``key``, default 2, then 200 with the calls it saw and ``meta.attempt``; ``ms`` waits
first), ``blob``
(an answer of ``bytes`` bytes) and the streaming ``count`` (``from``, ``to``,
``batch``, ``wait`` ms; ``fail_at=N`` answers 500 for the step that would reach N; ``big_at=N``
sends that step as one item of ``big`` bytes) and ``bulk`` (``size`` bytes per step, ``to``
steps, ``wait`` ms, default 0: a fast stream of large steps, for backpressure tests). Commands
``orders/*`` (see ``order``): ``orders/create`` answers the order, ``fail_until=N`` answers 500
to attempts below N, ``reject`` answers 422, ``ms`` waits first. It keeps a
short log of the calls it received (``GET /calls``, each with its ``time.monotonic()``) so tests
can check what crossed the gateway and when.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import msgspec
from aiohttp import web

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

CALLS = web.AppKey("calls", collections.deque[dict[str, Any]])
FLAKY = web.AppKey("flaky", dict[str, int])


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(data), status=status, content_type="application/json")


def _int(params: dict[str, Any], key: str, default: int) -> int:
    try:
        return int(params.get(key, default))
    except (TypeError, ValueError):
        raise web.HTTPBadRequest(
            text=_encode({"error": f"parameter {key!r} must be an integer"}).decode(),
            content_type="application/json",
        ) from None


def count_step(params: dict[str, Any]) -> dict[str, Any]:
    first, to, batch = _int(params, "from", 1), _int(params, "to", 10), _int(params, "batch", 1)
    wait = _int(params, "wait", 1000)
    previous = params.get("previous")
    start = first if previous in (None, "") else int(previous) + 1
    numbers = list(range(start, min(start + max(batch, 1), to + 1)))
    last = numbers[-1] if numbers else (start - 1)
    return {"list": numbers, "continue": last < to, "wait": wait, "next": last}


def bulk_step(params: dict[str, Any]) -> dict[str, Any]:
    size, to, wait = (
        _int(params, "size", 1024),
        _int(params, "to", 1_000_000),
        _int(params, "wait", 0),
    )
    previous = params.get("previous")
    n = 1 if previous in (None, "") else int(previous) + 1
    return {"list": ["x" * max(size, 0)], "continue": n < to, "wait": wait, "next": n}


async def saga(request: web.Request) -> web.Response:
    raw = await request.read()
    try:
        envelope = _decode(raw) if raw else {}
    except msgspec.DecodeError:
        return _json({"error": "body is not JSON"}, 400)
    params = envelope.get("parameters") if isinstance(envelope, dict) else None
    meta = envelope.get("meta", {}) if isinstance(envelope, dict) else {}
    name = request.match_info["saga"]
    request.app[CALLS].append(
        {
            "saga": name,
            "requestId": meta.get("requestId"),
            "x-request-id": request.headers.get("X-Request-Id"),
            "traceparent": request.headers.get("traceparent"),
            "parameters": params,
            "commandId": meta.get("commandId"),
            "attempt": meta.get("attempt"),
            "peer": request.transport.get_extra_info("peername") if request.transport else None,
            # CLOCK_MONOTONIC is system-wide on Linux: tests on this host can compare it.
            "at": time.monotonic(),
        }
    )
    p = params if isinstance(params, dict) else {}
    if name.startswith("orders/"):
        return await order(name.removeprefix("orders/"), p, meta)
    match name:
        case "echo":
            return _json(params)
        case "meta":  # what the runner got, the traceparent header included
            return _json({**meta, "traceparent": request.headers.get("traceparent")})
        case "sleep":  # ``ms`` from the parameters, or the query string of a POST
            ms = _int(p if "ms" in p else meta.get("query") or {}, "ms", 100)
            await asyncio.sleep(ms / 1000)
            return _json({"slept": ms})
        case "blob":
            return _json({"blob": "x" * _int(p, "bytes", 1000)})
        case "fail":
            status = _int(p, "status", 500)
            return _json({"error": p.get("message", "failed on purpose")}, status)
        case "count":
            step = count_step(p)
            if "fail_at" in p and any(n >= _int(p, "fail_at", 0) for n in step["list"]):
                return _json({"error": "count failed on purpose"}, 500)
            if "big_at" in p and any(n >= _int(p, "big_at", 0) for n in step["list"]):
                step["list"] = ["x" * _int(p, "big", 2_000_000)]
            return _json(step)
        case "bulk":
            return _json(bulk_step(p))
        case "flaky":  # fails `failures` times per `key`, then succeeds: for retry tests
            key = str(p.get("key", ""))
            if "ms" in p:
                await asyncio.sleep(_int(p, "ms", 0) / 1000)
            seen = request.app[FLAKY][key] = request.app[FLAKY].get(key, 0) + 1
            if seen <= _int(p, "failures", 2):
                return _json({"error": f"call {seen} fails on purpose"}, _int(p, "status", 503))
            return _json({"key": key, "calls": seen, "attempt": meta.get("attempt")})
    return _json({"error": f"no saga {name!r}"}, 404)


async def order(action: str, p: dict[str, Any], meta: dict[str, Any]) -> web.Response:
    """The sample command handler: what ``orders/*`` commands do."""
    attempt = meta.get("attempt") or 1
    if "ms" in p:
        await asyncio.sleep(_int(p, "ms", 0) / 1000)
    if attempt < _int(p, "fail_until", 0):
        return _json({"error": f"attempt {attempt} fails on purpose"}, 500)
    if p.get("reject"):
        return _json({"error": "order rejected"}, 422)
    order_id = meta.get("commandId") or meta.get("requestId")
    return _json({"order": order_id, "action": action, "sku": p.get("sku"), "attempt": attempt})


SCHEMA: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "busgate sample RPC runner", "version": "1"},
    "paths": {
        "/sleep": {
            "post": {
                "summary": "Answers after ms milliseconds",
                "requestBody": {
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Sleep"}}
                    }
                },
                "responses": {
                    "200": {
                        "description": "How long it slept",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Slept"}}
                        },
                    }
                },
            }
        },
        "/blob": {
            "post": {
                "summary": "A string of bytes characters",
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "bytes": {"type": "integer", "minimum": 0, "maximum": 4096}
                                },
                            }
                        }
                    }
                },
                "responses": {
                    "200": {
                        "description": "The blob",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["blob"],
                                    "properties": {"blob": {"type": "string"}},
                                }
                            }
                        },
                    }
                },
            }
        },
    },
    "components": {
        "schemas": {
            "Sleep": {
                "type": "object",
                "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": 50}},
            },
            "Slept": {
                "type": "object",
                "required": ["slept"],
                "properties": {"slept": {"type": "integer"}},
            },
        }
    },
}
"""What ``GET /api/{runner}/openapi.json`` answers: the OpenAPI document of two of the sagas,
which the adapters share for the edges' ``/api/openapi.json`` (``schema_url`` in
``busgate/dev.toml``; ``edge.contributed``)."""


async def schema(request: web.Request) -> web.Response:
    return _json(SCHEMA)


async def calls(request: web.Request) -> web.Response:
    made = request.app[CALLS]
    return _json(list(made))


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


def create_app() -> web.Application:
    app = web.Application()
    app[CALLS] = collections.deque(maxlen=20_000)
    app[FLAKY] = {}
    app.router.add_post("/api/{runner}/{saga:.*}", saga)
    app.router.add_get("/calls", calls)
    app.router.add_get("/api/{runner}/openapi.json", schema)
    app.router.add_get("/healthz", healthz)
    return app


def run(listen: str) -> None:
    host, _, port = listen.rpartition(":")
    web.run_app(create_app(), host=host or "127.0.0.1", port=int(port), access_log=None, print=None)
