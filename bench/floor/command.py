"""Floor for acked command publishes: aiohttp, one JetStream publish per POST, 202 after its ack.

What ``POST /api/command/...`` on busgate's edge is measured against (``busgate-nats-command``):
the body goes as it came to a file-backed stream, and the answer waits for the stream's ack,
the least a gateway can do and still promise the command is not lost. No envelope, ids,
idempotency, status record or headers: anything added here would lower the bar.

    python -m bench.floor.command --bus nats://127.0.0.1:4222 --listen 127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from bench.floor.common import run, serve, split_bus

STREAM = "FLOOR_CMD"
SUBJECTS = "floor.cmd.>"
JETSTREAM: web.AppKey[Any] = web.AppKey("jetstream")
_numbers = itertools.count(1)
"""A subject per command, as busgate publishes each to ``PREFIX.cmd.SYSTEM.ID``."""


async def publish(request: web.Request) -> web.Response:
    js = request.app[JETSTREAM]
    subject = f"floor.cmd.{next(_numbers)}"
    try:
        ack = await js.publish(subject, await request.read())
    except Exception as exc:
        return web.Response(status=503, text=f"{type(exc).__name__}: {exc}")
    body = json.dumps({"stream": ack.stream, "seq": ack.seq})
    return web.Response(status=202, text=body, content_type="application/json")


async def readyz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def app(bus: str) -> web.Application:
    kind, url = split_bus(bus)
    if kind != "nats":
        raise SystemExit("the command floor publishes to JetStream: give a nats:// URL")

    async def bus_ctx(application: web.Application) -> AsyncIterator[None]:
        import nats
        from nats.js.api import StorageType, StreamConfig

        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(STREAM, subjects=[SUBJECTS], storage=StorageType.FILE))
        application[JETSTREAM] = js
        yield
        await nc.close()

    application = web.Application()
    application.cleanup_ctx.append(bus_ctx)
    application.router.add_post("/{tail:.*}", publish)
    application.router.add_get("/readyz", readyz)
    return application


async def main(args: argparse.Namespace) -> None:
    await serve(app(args.bus), args.listen)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bus", required=True, help="nats://HOST:PORT")
    parser.add_argument("--listen", default="127.0.0.1:8080")
    run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
