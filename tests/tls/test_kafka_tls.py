"""Kafka over SSL (``kafka+ssl://…?ca=&cert=&key=``) with client certificates.

Tansu speaks no TLS (see ``tls_proxy.py``), so the broker here is Tansu behind a TLS proxy
process that requires client certificates, and Tansu advertises the proxy's address: every
aiokafka connection -- bootstrap, metadata, group coordinator, fetches -- goes through TLS.
What is proven is busgate's client side (aiokafka with ``security_protocol=SSL`` and the
shared context); a real Kafka broker's SSL listener is not exercised.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import trustme

from busgate.brokers import TansuBroker, die_with_parent, free_port, wait_for_port
from busgate.bus import from_url
from busgate.contracts.errors import BusUnavailable
from busgate.runners.native import build
from tests.bus.conftest import eventually, make_request
from tests.tls.bus_stack import echo_across_processes
from tests.tls.certs import write_ca, write_leaf

pytestmark = [pytest.mark.kafka]

PROXY = Path(__file__).with_name("tls_proxy.py")


@dataclass
class SslKafka:
    port: int
    """The proxy's: the only address clients are given."""
    files: dict[str, str]
    """ca, cert, key of a trusted client."""
    folder: Path

    def url(self, **files: str) -> str:
        query = "&".join(f"{k}={quote(v)}" for k, v in files.items())
        return f"kafka+ssl://127.0.0.1:{self.port}" + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
def ssl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SslKafka]:
    folder = tmp_path_factory.mktemp("kafka-tls")
    ca = trustme.CA()
    cafile = write_ca(ca, folder, "ca")
    server = write_leaf(ca.issue_cert("127.0.0.1"), folder, "server")
    client = write_leaf(ca.issue_cert("busgate-node"), folder, "client")
    port = free_port()
    with TansuBroker(advertised=f"127.0.0.1:{port}") as broker:
        proxy = subprocess.Popen(
            [sys.executable, str(PROXY), str(port), str(broker.port), *server, cafile],
            stdout=subprocess.DEVNULL,
            preexec_fn=die_with_parent(),
        )
        try:
            wait_for_port("127.0.0.1", port, 20, proxy)
            yield SslKafka(port, {"ca": cafile, "cert": client[0], "key": client[1]}, folder)
        finally:
            proxy.terminate()
            proxy.wait(10)


async def test_an_untrusted_server_or_a_missing_client_cert_is_refused(ssl_kafka) -> None:
    other = write_ca(trustme.CA(), ssl_kafka.folder, "other-ca")
    files = {**ssl_kafka.files, "ca": other}
    bus = from_url(ssl_kafka.url(**files), node="untrusted")
    bus.connect_timeout = 3  # type: ignore[attr-defined]
    with pytest.raises(BusUnavailable, match="cannot connect to Kafka"):
        await bus.connect()
    await bus.close()
    bus = from_url(ssl_kafka.url(ca=ssl_kafka.files["ca"]), node="nocert")
    bus.connect_timeout = 3  # type: ignore[attr-defined]
    with pytest.raises(BusUnavailable):  # the proxy's TLS alert: no client certificate
        await bus.connect()
    await bus.close()
    bus = from_url(ssl_kafka.url(**ssl_kafka.files), node="trusted")
    await bus.connect()
    assert bus.connected
    await bus.close()


def test_request_path_over_kafka_ssl(ssl_kafka, tmp_path: Path) -> None:
    """Runner, adapter and edge as separate processes; the adapter and the edge reach each
    other only through Kafka over SSL (requests, replies, presence, stores)."""
    echo_across_processes(ssl_kafka.url(**ssl_kafka.files), tmp_path, "kafka+ssl", timeout=60)


async def test_a_bus_native_runner_over_kafka_ssl(ssl_kafka) -> None:
    """The runner kit's FastStream Kafka broker and its admin client take the bus URL's SSL:
    an edge bus over SSL gets its answer."""
    url = ssl_kafka.url(**ssl_kafka.files)
    runner = build("kitssl", bus=url, prefix="kitssl")
    await runner.start()
    edge = from_url(url, node="kitssl-edge", prefix="kitssl")
    try:
        await edge.connect()
        await eventually(lambda: edge.presence.serves("kitssl"), within=30)
        reply = await edge.request(make_request("echo", system="kitssl", body=b'{"n": 1}'))
        assert reply.status == 200 and json.loads(reply.body) == {"n": 1}
    finally:
        await edge.close()
        await runner.stop(grace=1)
