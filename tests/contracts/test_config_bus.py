"""``type = "bus"`` systems in the config: served by their own runners, never by an adapter."""

import pytest

from busgate.adapters.service import AdapterService
from busgate.contracts.config import BusSystem, ConfigError, parse

RAW = {
    "systems": {
        "demo": {"type": "rpc", "base_url": "http://127.0.0.1:9/api/demo"},
        "orders": {"type": "bus", "timeout": 2.5},
    },
    "channels": {"demo": {"system": "demo"}, "orders": {"system": "orders"}},
}


def test_a_bus_system_parses_with_its_timeout() -> None:
    config = parse(RAW)
    assert isinstance(config.systems["orders"], BusSystem)
    assert config.timeout_for("orders") == 2.5


def test_a_bus_system_takes_no_runner_url() -> None:
    raw = {**RAW, "systems": {**RAW["systems"], "orders": {"type": "bus", "base_url": "x"}}}
    with pytest.raises(ConfigError, match="base_url"):
        parse(raw)


def test_commands_need_a_system_with_an_adapter() -> None:
    with pytest.raises(ConfigError, match="bus-native"):
        parse({**RAW, "commands": {"system": "orders"}})


def test_adapters_leave_bus_systems_to_their_runners() -> None:
    config = parse(RAW)
    assert AdapterService(config).systems == ["demo"]
    with pytest.raises(ValueError, match="orders"):
        AdapterService(config, ["orders"])
