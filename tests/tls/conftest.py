"""An edge node serving HTTPS (``[gateway.tls]``) on a real socket, on the memory bus: the
TLS tests judge handshakes and certificates, which the bus does not touch (the e2e test in
``test_dev_tls.py`` runs the whole stack)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from busgate.brokers import free_port
from busgate.edge.app import create_app
from busgate.edge.http_server import runner_for
from busgate.edge.tls_server import ServerCerts
from tests.edge.auth_support import Provider, SessionNodes, auth_config
from tests.tls.certs import write_ca, write_leaf


@dataclass
class TlsEdge:
    url: str
    port: int
    certs: ServerCerts
    provider: Provider
    ca: str
    """The CA file that verifies the server."""


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    return write_leaf(ca.issue_cert("127.0.0.1", "localhost"), tmp_path, "server")


@pytest.fixture
async def tls_edge(request: pytest.FixtureRequest, ca, client_ca, server_files, tmp_path):
    """``start(**tls)`` serves an edge with ``[gateway.tls]`` = the server files + ``tls``."""
    nodes = SessionNodes("memory", request)

    @contextlib.asynccontextmanager
    async def start(**tls: Any) -> AsyncIterator[TlsEdge]:
        from tests.edge.memory_bus import MemoryBus

        cert, key = server_files
        settings = {"cert": cert, "key": key, **tls}
        if settings.get("client_auth", "none") != "none":
            settings.setdefault("ca", write_ca(client_ca, tmp_path, "client-ca"))
        config = auth_config(gateway={"tls": settings})
        bus = MemoryBus()
        provider = Provider()
        await bus.serve(["demo", "auth"], provider)
        app = create_app(config, bus=bus, sessions=await nodes.open())
        runner = runner_for(app, config.gateway, access_log=None)
        await runner.setup()
        assert config.gateway.tls is not None
        certs = ServerCerts(config.gateway.tls)
        rotation = asyncio.create_task(certs.run())
        port = free_port()
        try:
            await web.TCPSite(runner, "127.0.0.1", port, ssl_context=certs.context).start()
            yield TlsEdge(
                f"https://127.0.0.1:{port}", port, certs, provider, write_ca(ca, tmp_path, "ca")
            )
        finally:
            rotation.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rotation
            await runner.cleanup()

    yield start
    await nodes.close()


def client_context(ca: str, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx
