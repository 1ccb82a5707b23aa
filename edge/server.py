"""Runs one edge node until SIGINT/SIGTERM, then shuts down gracefully.

Like ``web.run_app``, but with the edge's own runner (``edge.http_server``: read timeouts,
JSON parser errors), which ``run_app`` cannot take.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from busgate import gc_tuning
from busgate.bus.config_source import initial_config
from busgate.contracts.config import Config
from busgate.edge import keys
from busgate.edge.app import create_app
from busgate.edge.http_server import runner_for
from busgate.edge.tls_server import rotating

log = logging.getLogger("busgate.edge")


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(config: Config, config_path: str | None = None) -> None:
    """Serve until cancelled (or until a signal raises ``GracefulExit``)."""
    host, port = split_listen(config.gateway.listen)
    config = await initial_config(config)
    runner = runner_for(
        create_app(config, config_path=config_path),
        config.gateway,
        access_log=None,
        shutdown_timeout=10,
        handle_signals=True,
    )
    await runner.setup()
    try:
        async with contextlib.AsyncExitStack() as stack:
            ssl_context = None
            if (tls := config.gateway.tls) is not None:
                bus = runner.app[keys.BUS]  # connected by now (the app's cleanup_ctx)
                ssl_context = (await stack.enter_async_context(rotating(tls, bus))).context
            await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
            scheme = "https" if ssl_context else "http"
            log.info("edge %s listening on %s://%s:%d", config.gateway.id, scheme, host, port)
            gc_tuning.settle()
            await asyncio.Future()  # until cancelled
    finally:
        await runner.cleanup()


def run(config: Config, config_path: str | None = None) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(serve(config, config_path))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
