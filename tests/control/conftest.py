"""Real parts for the runtime-control tests: one nats-server, one Tansu broker and the sample
RPC runner as its own process, each started once per session."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from busgate.brokers import NatsServer, TansuBroker, free_port, wait_for_port

TRANSPORTS = [
    pytest.param("nats", marks=pytest.mark.nats, id="nats"),
    pytest.param("kafka", marks=pytest.mark.kafka, id="kafka"),
]


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server


@pytest.fixture(scope="session")
def tansu_broker() -> Iterator[TansuBroker]:
    with TansuBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def runner_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "busgate", "runner", "rpc", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, 30, proc)  # type: ignore[arg-type]
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def bus_url(request: pytest.FixtureRequest) -> str:
    """The broker URL of the transport the test is parametrized with (``transport``)."""
    transport = request.getfixturevalue("transport")
    if transport == "nats":
        return str(request.getfixturevalue("nats_server").url)
    return str(request.getfixturevalue("tansu_broker").url)
