"""``deploy/busgate.systems.example.toml`` (CRUD and RSocket systems written by hand) stays a
file busgate accepts, with the values its comments promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from busgate.adapters.rsocket.pool import targets
from busgate.cli import _config
from busgate.contracts.config import CrudSystem, RsocketSystem, load

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "busgate.systems.example.toml"


@pytest.fixture(autouse=True)
def no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("BUSGATE__")]:
        monkeypatch.delenv(name)


def test_the_systems_example_loads_with_its_values() -> None:
    config = _config(str(EXAMPLE))
    products, pricing = config.systems["products"], config.systems["pricing"]
    assert isinstance(products, CrudSystem)
    assert products.base_url == "http://products.internal:9003/api/data"
    assert isinstance(pricing, RsocketSystem)
    assert targets(pricing) == ["pricing-1.internal:7000", "pricing-2.internal:7000"]
    assert (pricing.retry_attempts, pricing.retry_duration) == (5, 2.0)
    assert "if-match" in config.gateway.forward_headers


def test_the_websocket_variant_in_its_comment_is_accepted() -> None:
    config = load(
        EXAMPLE,
        env={
            "BUSGATE__SYSTEMS__PRICING__PROTOCOL": "websocket",
            "BUSGATE__SYSTEMS__PRICING__URLS": '["ws://pricing-1.internal:7001/rsocket"]',
        },
    )
    pricing = config.systems["pricing"]
    assert isinstance(pricing, RsocketSystem) and pricing.protocol == "websocket"


def test_busgate_config_check_accepts_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "busgate", "config", "check", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "2 system(s), 2 channel(s)" in result.stdout
    assert result.stderr == ""
