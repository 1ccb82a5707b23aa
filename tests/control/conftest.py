"""The runtime-control tests run on the session's nats-server, Tansu broker and sample RPC
runner (``tests/conftest.py``)."""

from __future__ import annotations

import pytest

TRANSPORTS = [
    pytest.param("nats", marks=pytest.mark.nats, id="nats"),
    pytest.param("kafka", marks=pytest.mark.kafka, id="kafka"),
]


@pytest.fixture
def bus_url(request: pytest.FixtureRequest) -> str:
    """The broker URL of the transport the test is parametrized with (``transport``)."""
    transport = request.getfixturevalue("transport")
    if transport == "nats":
        return str(request.getfixturevalue("nats_server").url)
    return str(request.getfixturevalue("tansu_broker").url)
