"""Runs one edge node until SIGINT/SIGTERM, then shuts down gracefully."""

from __future__ import annotations

import logging

from aiohttp import web

from busgate.contracts.config import Config
from busgate.edge.app import create_app

log = logging.getLogger("busgate.edge")


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def run(config: Config) -> None:
    host, port = split_listen(config.gateway.listen)
    app = create_app(config)

    def ready(_: object) -> None:
        log.info("edge %s listening on http://%s:%d", config.gateway.id, host, port)

    web.run_app(
        app,
        host=host,
        port=port,
        access_log=None,
        print=ready,
        shutdown_timeout=10,
        handle_signals=True,
    )
