"""Stand-in runner: ``POST /api/demo/echo`` answers the ``parameters`` it was sent.

Used only while ``busgate runner rpc`` does not exist in the tree (the results then say so):
the benchmark always drives floor and busgate against the same runner program, so the
ratio compares the code between edge and runner, not the runners.

    python -m bench.floor.runner --listen 127.0.0.1:9000
"""

from __future__ import annotations

import argparse

import msgspec
from aiohttp import web

from bench.floor.common import run, serve


class Call(msgspec.Struct):
    parameters: msgspec.Raw = msgspec.Raw(b"null")


_decode = msgspec.json.Decoder(Call).decode


async def echo(request: web.Request) -> web.Response:
    try:
        call = _decode(await request.read())
    except msgspec.DecodeError as exc:
        return web.Response(status=400, text=str(exc))
    return web.Response(body=bytes(call.parameters), content_type="application/json")


async def readyz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def main(args: argparse.Namespace) -> None:
    application = web.Application()
    application.router.add_post("/api/demo/echo", echo)
    application.router.add_get("/readyz", readyz)
    await serve(application, args.listen)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:9000")
    run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
