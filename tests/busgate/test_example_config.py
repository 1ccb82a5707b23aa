"""The shipped ``deploy/busgate.example.toml`` stays a file busgate accepts, read the way the
CLI reads it (a rename in the config schema must update the example, not silently break
what operators copy)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from busgate.bus import parse_url
from busgate.cli import _config
from busgate.contracts.config import RpcSystem, load

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "busgate.example.toml"


@pytest.fixture(autouse=True)
def no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The file alone, whatever BUSGATE__… the environment running the tests holds."""
    for name in [n for n in os.environ if n.startswith("BUSGATE__")]:
        monkeypatch.delenv(name)


def test_the_example_loads_through_the_cli_loader_with_its_values() -> None:
    config = _config(str(EXAMPLE))
    gateway = config.gateway
    assert (gateway.id, gateway.prefix, gateway.listen) == ("gw", "busgate", "0.0.0.0:8080")
    assert gateway.bus == "nats://nats-1:4222,nats://nats-2:4222"
    assert (gateway.return_ids, gateway.accept_request_id, gateway.accept_trace) == (
        "error",
        False,
        True,
    )
    assert gateway.max_body == 1_000_000  # within the 1 MiB NATS carries by default
    assert (gateway.header_timeout, gateway.body_timeout) == (10.0, 30.0)
    orders = config.systems["orders"]
    assert isinstance(orders, RpcSystem)
    assert (orders.base_url, orders.timeout, orders.max_connections) == (
        "http://orders.internal:8000/api/orders",
        10.0,
        200,
    )
    assert config.channels["orders"].system == "orders"
    assert set(config.channels["orders"].methods) == {"GET", "POST"}
    files = config.services["documents"]
    assert (files.type, files.url, files.token, files.scope) == (
        "file",
        "file:///var/lib/busgate/files",
        "main",
        "user",
    )
    assert files.max_size == 100 * 1024 * 1024


def test_the_kafka_url_the_example_suggests_is_accepted() -> None:
    """The example's comment offers a Kafka URL (and says env overrides single keys)."""
    kafka = next(
        line.split("=", 1)[1].strip().strip('"')
        for line in EXAMPLE.read_text().splitlines()
        if line.startswith("# bus = ")
    )
    config = load(EXAMPLE, env={"BUSGATE__GATEWAY__BUS": kafka})
    assert config.gateway.bus == kafka
    scheme, servers, options = parse_url(kafka)
    assert (scheme, servers) == ("kafka", ["k1:9092", "k2:9092", "k3:9092"])
    assert options == {"request_partitions": 12, "replication_factor": 3}


def test_busgate_config_check_accepts_the_example() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "busgate", "config", "check", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "ok — 1 system(s), 1 channel(s), bus nats://nats-1:4222,nats://nats-2:4222" in (
        result.stdout
    )
    assert result.stderr == ""


def uncomment_tables(text: str) -> str:
    """The commented ``# [table]`` blocks (and their ``# key = value`` lines) as TOML."""
    out, in_block = [], False
    for line in text.splitlines():
        if line.startswith("# ["):
            in_block = True
        elif not (in_block and line.startswith("# ") and " = " in line):
            in_block = False
        out.append(line[2:] if in_block else line)
    return "\n".join(out) + "\n"


def test_the_commented_tls_examples_are_accepted() -> None:
    """The bus URLs over TLS, ``[gateway.tls]`` and ``[systems.orders.tls]`` as shown."""
    import tomllib

    from busgate.bus.security import BusTls
    from busgate.contracts.config import parse

    text = EXAMPLE.read_text()
    urls = [
        tomllib.loads(line[2:])["bus"] for line in text.splitlines() if line.startswith("# bus = ")
    ]
    tls = [parse_url(url)[2].get("tls") for url in urls if "ca=" in url]
    assert len(tls) == 2 and all(isinstance(t, BusTls) and t.cert for t in tls)
    shown = uncomment_tables(text).replace("http://orders.internal", "https://orders.internal")
    config = parse(tomllib.loads(shown))
    assert config.gateway.tls is not None and config.gateway.tls.client_auth == "optional"
    orders = config.systems["orders"]
    assert isinstance(orders, RpcSystem) and orders.tls is not None and orders.tls.cert
