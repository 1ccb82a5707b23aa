"""``busgate cert push``: a certificate stored on the bus (a real NATS server) is served by
every edge with ``source = "bus"``, and a second push rotates all of them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from busgate.brokers import free_port
from busgate.bus import from_url
from busgate.contracts.config import load
from busgate.edge.app import create_app
from busgate.edge.http_server import runner_for
from busgate.edge.tls_server import ServerCerts, rotating
from tests.tls.certs import write_ca, write_leaf

pytestmark = [pytest.mark.nats]


def push(config: Path, cert: str, key: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "busgate", "cert", "push", cert, key, "--config", str(config)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@contextlib.asynccontextmanager
async def edge(config_path: Path, node: str) -> AsyncIterator[tuple[int, ServerCerts]]:
    config = load(config_path)
    assert config.gateway.tls is not None
    bus = from_url(config.gateway.bus, node=node, prefix=config.gateway.prefix)
    await bus.connect()
    runner = runner_for(create_app(config, bus=bus), config.gateway, access_log=None)
    await runner.setup()
    try:
        async with rotating(config.gateway.tls, bus) as certs:
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port, ssl_context=certs.context).start()
            yield port, certs
    finally:
        await runner.cleanup()
        await bus.close()


async def served(port: int, cafile: str) -> str:
    ctx = ssl.create_default_context(cafile=cafile)
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return hashlib.sha256(der).hexdigest()


def fingerprint(path: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = x509.load_pem_x509_certificates(Path(path).read_bytes())[0]
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


async def test_pushed_certificate_reaches_every_edge(nats_server, tmp_path: Path) -> None:
    ca = trustme.CA()
    cafile = write_ca(ca, tmp_path, "ca")
    first = write_leaf(ca.issue_cert("127.0.0.1"), tmp_path, "first")
    second = write_leaf(ca.issue_cert("127.0.0.1"), tmp_path, "second")
    config = tmp_path / "busgate.toml"
    config.write_text(
        f"""
[gateway]
bus = "{nats_server.url}"
prefix = "t{secrets.token_hex(4)}"

[gateway.tls]
source = "bus"
poll = 0.1
grace = 0.3
"""
    )
    done = await asyncio.to_thread(push, config, *first)
    assert done.returncode == 0, done.stderr
    assert "pushed certificate 'default'" in done.stdout

    async with edge(config, "e1") as (port1, certs1), edge(config, "e2") as (port2, certs2):
        for port in (port1, port2):
            assert await served(port, cafile) == fingerprint(first[0])
        changed = asyncio.gather(certs1.watch.changed(), certs2.watch.changed())
        done = await asyncio.to_thread(push, config, *second)
        assert done.returncode == 0, done.stderr
        await asyncio.wait_for(changed, 10)
        for port in (port1, port2):
            assert await served(port, cafile) == fingerprint(second[0])


def test_push_refuses_a_key_that_does_not_match(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, _ = write_leaf(ca.issue_cert("a"), tmp_path, "a")
    _, key = write_leaf(ca.issue_cert("b"), tmp_path, "b")
    config = tmp_path / "busgate.toml"
    config.write_text('[gateway]\nbus = "nats://127.0.0.1:9"\n')
    done = push(config, cert, key)
    assert done.returncode == 2
    assert "b.key: the private key does not match the certificate" in done.stderr
