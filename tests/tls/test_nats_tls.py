"""NATS over TLS with client certificates (``tls://…?ca=&cert=&key=``): a nats-server that
requires them (``--tlsverify``), and the whole request path -- runner, adapter and edge as
separate processes -- across it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import trustme

from busgate.brokers import NatsServer
from busgate.bus import from_url
from tests.tls.bus_stack import echo_across_processes
from tests.tls.certs import write_ca, write_leaf

pytestmark = [pytest.mark.nats]


class TlsNatsServer(NatsServer):
    """nats-server with TLS, asking every client for a certificate signed by ``ca``."""

    def __init__(self, cert: str, key: str, ca: str) -> None:
        super().__init__()
        self.tls = (cert, key, ca)

    def command(self) -> list[str]:
        cert, key, ca = self.tls
        return [*super().command(), "--tlsverify", "--tlscert", cert, "--tlskey", key,
                "--tlscacert", ca]  # fmt: skip


@pytest.fixture(scope="module")
def nats_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TlsNatsServer, dict]]:
    folder = tmp_path_factory.mktemp("nats-tls")
    ca = trustme.CA()
    cafile = write_ca(ca, folder, "ca")
    server = write_leaf(ca.issue_cert("127.0.0.1"), folder, "server")
    client = write_leaf(ca.issue_cert("busgate-node"), folder, "client")
    with TlsNatsServer(*server, cafile) as broker:
        yield broker, {"ca": cafile, "cert": client[0], "key": client[1]}  # type: ignore[misc]


def tls_url(broker: NatsServer, **files: str) -> str:
    query = "&".join(f"{k}={quote(v)}" for k, v in files.items())
    return f"tls://{broker.host}:{broker.port}" + (f"?{query}" if query else "")


async def test_a_client_without_a_certificate_is_refused(nats_tls) -> None:
    broker, files = nats_tls
    bus = from_url(tls_url(broker, ca=files["ca"]), node="nocert")
    bus.connect_timeout = 3  # type: ignore[attr-defined]
    with pytest.raises(TimeoutError):  # the server's TLS alert, retried until the timeout
        await bus.connect()
    await bus.close()
    bus = from_url(tls_url(broker, **files), node="withcert")
    await bus.connect()
    assert bus.connected
    await bus.close()


def test_request_path_over_nats_tls(nats_tls, tmp_path: Path) -> None:
    broker, files = nats_tls
    echo_across_processes(tls_url(broker, **files), tmp_path, "tls", timeout=30)


async def test_busgate_trace_reads_the_spans_of_a_tls_bus(nats_tls) -> None:
    """``busgate trace ID --bus tls://…?ca=&cert=&key=`` connects with the URL's files, as the
    nodes do (it used to pass the bare servers: a private CA failed the handshake)."""
    from busgate.bus.spans import Kind, encode_batch
    from busgate.bus.trace_export import NatsTraceSink, bucket

    broker, files = nats_tls
    url = tls_url(broker, **files)
    bus = from_url(url, node="tracer")
    await bus.connect()
    try:
        sink = NatsTraceSink(bus.nc, bus.names, max_age=60)  # type: ignore[attr-defined]
        await sink.start()
        trace_id, now = "ab" * 16, time.time_ns()
        span = (trace_id, "cd" * 8, "", "POST /api/request/{channel}/{path}", Kind.SERVER,
                now, now + 2_000_000, {"busgate.request_id": "tls-1", "url.path": "/api/x"},
                0, "", (), ())  # fmt: skip
        await sink.publish(bucket(trace_id, "tls-1"), encode_batch("busgate-edge", "e1", [span]))
        await bus.nc.flush()  # type: ignore[attr-defined]
    finally:
        await bus.close()
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "busgate", "trace", "tls-1", "--bus", url, "--wait", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"trace {trace_id}  /api/x  ok  2.0 ms" in done.stdout


async def test_busgate_tail_follows_a_tls_bus(nats_tls, monkeypatch) -> None:
    from busgate import tail

    broker, files = nats_tls
    url = tls_url(broker, **files)
    listening, got = asyncio.Event(), asyncio.Queue[dict]()
    monkeypatch.setattr(tail, "_following", lambda *args, **kwargs: listening.set())
    stop = asyncio.Event()
    task = asyncio.create_task(tail.tail_nats(url, ["tls.tail.>"], stop, got.put_nowait))
    try:
        async with asyncio.timeout(30):
            await listening.wait()
        bus = from_url(url, node="publisher")
        await bus.connect()
        await bus.nc.publish("tls.tail.x", b'{"over": "tls"}')  # type: ignore[attr-defined]
        await bus.close()
        line = await asyncio.wait_for(got.get(), 10)
        assert line["subject"] == "tls.tail.x"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_bus_native_runner_serves_over_a_tls_bus(nats_tls) -> None:
    """The kit runner connects with the bus URL's CA and client certificate too."""
    from nats.aio.client import Client

    from busgate.bus.nats.transport import connect
    from busgate.contracts.codec import decode, encode
    from busgate.contracts.wire import Reply, Request
    from busgate.runners.native import build

    broker, files = nats_tls
    url = tls_url(broker, **files)
    runner = build("tlskit", bus=url, prefix="tlskit")
    async with asyncio.timeout(30):
        await runner.start()
    nc: Client = await connect(url)
    try:
        sub = await nc.subscribe("tlskit.reply.test.1")
        req = Request(id="1", system="tlskit", path="echo", body=b'{"a": 1}',
                      reply_to="tlskit.reply.test.1", deadline=time.time() + 10)  # fmt: skip
        await nc.publish("tlskit.req.tlskit", encode(req))
        reply = decode((await sub.next_msg(timeout=10)).data)
        assert isinstance(reply, Reply) and reply.status == 200 and reply.body == b'{"a":1}'
    finally:
        await nc.close()
        await runner.stop(grace=1)
