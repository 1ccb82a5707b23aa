"""The bus client's certificate and CA follow the rotation rules: files re-read (at most
every ``poll`` seconds) when a connection is made, so a reconnect presents the new client
certificate and trusts the new CA -- seen from nats-server's side (``connz?auth=true``
lists the certificate each client presented)."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import time
import urllib.request
from pathlib import Path

import pytest
import trustme

from busgate.brokers import free_port
from busgate.bus import from_url
from busgate.bus.security import BusTls, context_for
from busgate.tls.pem import read
from tests.bus.conftest import eventually
from tests.tls.certs import write_ca, write_leaf
from tests.tls.test_nats_tls import TlsNatsServer, tls_url

pytestmark = [pytest.mark.nats]


class MonitoredTlsNats(TlsNatsServer):
    def __init__(self, cert: str, key: str, ca: str) -> None:
        super().__init__(cert, key, ca)
        self.monitor = free_port()

    def command(self) -> list[str]:
        return [*super().command(), "-m", str(self.monitor)]

    def client_certs(self, name: str) -> list[str]:
        """SHA-256 of the leaf certificate each connection named ``name`` presented."""
        url = f"http://127.0.0.1:{self.monitor}/connz?auth=true"
        with urllib.request.urlopen(url, timeout=2) as resp:
            conns = json.load(resp)["connections"]
        return [c["tls_peer_certs"][0]["cert_sha256"] for c in conns if c.get("name") == name]


async def test_a_reconnect_presents_the_new_client_cert_and_trusts_the_new_ca(
    tmp_path: Path,
) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    server_trusts = write_ca(old_ca, tmp_path, "clients-ca")
    client_ca = tmp_path / "bus-ca.pem"
    shutil.copy(write_ca(old_ca, tmp_path, "old-ca"), client_ca)
    cert, key = write_leaf(old_ca.issue_cert("node-a"), tmp_path, "client")
    first = read(cert, key).fingerprint
    server = MonitoredTlsNats(
        *write_leaf(old_ca.issue_cert("127.0.0.1"), tmp_path, "server-old"), server_trusts
    )
    server.start()
    bus = from_url(
        tls_url(server, ca=str(client_ca), cert=cert, key=key) + "&poll=0.2", node="rotating"
    )
    try:
        await bus.connect()
        assert server.client_certs("rotating") == [first]

        # The client's files change: a new client certificate, and a CA bundle that adds the
        # CA of the server's next certificate. Then the server comes back with that one.
        write_leaf(old_ca.issue_cert("node-b"), tmp_path, "client")
        second = read(cert, key).fingerprint
        client_ca.write_bytes(old_ca.cert_pem.bytes() + new_ca.cert_pem.bytes())
        await asyncio.sleep(0.25)  # past ``poll``: the next handshake reads the files
        server.stop()
        await eventually(lambda: not bus.connected)
        server.tls = (
            *write_leaf(new_ca.issue_cert("127.0.0.1"), tmp_path, "server-new"),
            server_trusts,
        )
        started = time.monotonic()
        server.start()
        await eventually(lambda: bus.connected, within=15)
        took = time.monotonic() - started
        assert server.client_certs("rotating") == [second]
        print(f"reconnected with the new client certificate {took:.2f} s after the restart")
    finally:
        await asyncio.wait_for(bus.close(), 10)
        server.stop()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_every_tls_connection_of_either_loop_passes_the_refresh(loop: str, tmp_path: Path) -> None:
    """The rotation hangs on the event loop starting each TLS connection with the context's
    ``wrap_bio``: asyncio's loop in tests, uvloop in the ``busgate`` processes."""
    import uvloop

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ctx = context_for(BusTls(ca=write_ca(ca, tmp_path, "ca"), poll=60))
    checks: list[float] = []
    check = ctx.watch.check
    ctx.watch.check = lambda: (checks.append(time.monotonic()), check())[1]  # type: ignore[method-assign]

    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
        port = listener.sockets[0].getsockname()[1]
        async with listener:
            for _ in range(2):
                ctx._due = 0  # as if ``poll`` seconds had passed
                _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
                writer.close()

    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
    assert len(checks) == 2


async def test_a_ca_removed_from_the_file_is_refused_from_the_next_connection(
    tmp_path: Path,
) -> None:
    """An ``SSLContext``'s trust store only grows: the handshake goes to a context built
    from the file as it is now, not to one that once loaded the removed CA."""
    kept, removed = trustme.CA(), trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    removed.issue_cert("127.0.0.1").configure_cert(server)
    ca_file = tmp_path / "bus-ca.pem"
    ca_file.write_bytes(kept.cert_pem.bytes() + removed.cert_pem.bytes())
    ctx = context_for(BusTls(ca=str(ca_file), poll=60))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def connect() -> None:
        ctx._due = 0  # as if ``poll`` seconds had passed
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        await connect()
        ca_file.write_bytes(kept.cert_pem.bytes())
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect()
        ca_file.write_bytes(kept.cert_pem.bytes() + removed.cert_pem.bytes())
        await connect()  # and trusted again once it is back
