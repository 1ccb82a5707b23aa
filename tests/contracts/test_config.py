import pytest

from busgate.contracts.config import ConfigError, load, parse

BASE = {
    "systems": {"demo": {"type": "rpc", "base_url": "http://127.0.0.1:9/api/demo"}},
    "channels": {"demo": {"system": "demo"}},
}


def error_of(raw) -> str:
    with pytest.raises(ConfigError) as info:
        parse(raw)
    return str(info.value)


def test_valid_config_gets_defaults():
    config = parse(BASE)
    assert config.gateway.max_body == 10 * 1024 * 1024
    assert config.gateway.return_ids == "none"
    assert config.systems["demo"].timeout is None
    assert config.timeout_for("demo", "echo") == config.gateway.timeout == 30.0
    assert config.channels["demo"].methods == ("GET", "POST", "PUT", "PATCH", "DELETE")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"gateway": {"max_body": "big"}}, "gateway.max_body: Expected `int`, got `str`"),
        ({"gateway": {"lisen": "x"}}, "gateway: Object contains unknown field `lisen`"),
        ({"gateway": {"return_ids": "sometimes"}}, "gateway.return_ids: Invalid enum value"),
        ({"systems": {"s1": {"type": "rpc"}}}, "systems.s1: base_url: set base_url, or base_urls"),
        (
            {"systems": {"s1": {"type": "rpc", "base_url": "u", "timeout": "slow"}}},
            "systems.s1.timeout: Expected `float | null`, got `str`",
        ),
        ({"gateway": {"timeout": 0}}, "gateway.timeout: Expected `float` > 0.0"),
        (
            {**BASE, "channels": {"c": {"system": "demo", "timeout": -1}}},
            "channels.c.timeout: Expected `float` > 0.0",
        ),
        (
            {**BASE, "channels": {"c": {"system": "demo", "paths": {"x": {"timeout": 0}}}}},
            "channels.c.paths.x.timeout: Expected `float` > 0.0",
        ),
        ({"systems": {"s1": {"type": "soap", "base_url": "u"}}}, "systems.s1.type: Invalid value"),
        ({**BASE, "channels": {"c": {"system": "nope"}}}, "channels.c.system: unknown system"),
        ({**BASE, "channels": {"c": {"system": "demo", "methods": ["FETCH"]}}}, "channels.c:"),
    ],
)
def test_errors_name_the_key_path(raw, expected):
    assert expected in error_of(raw)


def test_environment_overrides_single_keys(tmp_path):
    path = tmp_path / "busgate.toml"
    path.write_text('[gateway]\nid = "a"\n[systems.demo]\ntype = "rpc"\nbase_url = "http://x"\n')
    config = load(
        path,
        env={
            "BUSGATE__GATEWAY__LISTEN": "0.0.0.0:9000",
            "BUSGATE__GATEWAY__MAX_BODY": "1024",
            "BUSGATE__SYSTEMS__DEMO__BASE_URL": "http://y",
            "BUSGATE__CHANNELS__NEW__SYSTEM": "demo",
            "UNRELATED": "1",
        },
    )
    assert config.gateway.listen == "0.0.0.0:9000"
    assert config.gateway.max_body == 1024
    assert config.systems["demo"].base_url == "http://y"
    assert config.channels["new"].system == "demo"


def test_unreadable_and_malformed_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load(bad, env={})


def test_shipped_dev_config_is_valid():
    from busgate.cli import DEV_CONFIG

    config = load(DEV_CONFIG, env={})
    assert config.channels["demo"].system == "demo"
    assert config.gateway.return_ids == "always"


def timeouts(gateway: float, system: float | None, channel: float | None, paths: dict):
    return parse(
        {
            "gateway": {"timeout": gateway},
            "systems": {"s": {"type": "rpc", "base_url": "http://x", "timeout": system}},
            "channels": {
                "c": {
                    "system": "s",
                    "timeout": channel,
                    "paths": {key: {"timeout": value} for key, value in paths.items()},
                }
            },
        }
    )


def test_the_most_specific_timeout_set_applies_longer_or_shorter():
    # None stands for "not set"; msgspec takes an explicit null as the default.
    assert timeouts(7, None, None, {}).timeout_for("c", "a") == 7
    assert timeouts(7, 3, None, {}).timeout_for("c", "a") == 3
    assert timeouts(7, 3, 60, {}).timeout_for("c", "a") == 60  # longer than the system's
    config = timeouts(7, 3, 60, {"*": 20, "slow/*": 90, "slow/quick": 0.5, "b": 1})
    assert config.timeout_for("c", "a") == 20
    assert config.timeout_for("c", "slow") == 90
    assert config.timeout_for("c", "slow/x/y") == 90
    assert config.timeout_for("c", "slow/quick") == 0.5
    assert config.timeout_for("c", "/b/") == 1
    assert config.timeout_for("c", "slowly") == 20
    assert timeouts(7, 3, None, {"slow/*": 90}).timeout_for("c", "other") == 3


def test_runner_tls_needs_every_runner_on_https():
    """``tls`` with ``base_urls``: one plain runner among them would be called without it."""
    https = ["https://127.0.0.1:9/a", "https://127.0.0.1:10/a"]
    ok = parse({"systems": {"s": {"type": "rpc", "base_urls": https, "tls": {}}}})
    assert ok.systems["s"].base_url == https[0]
    mixed = ["https://127.0.0.1:9/a", "http://127.0.0.1:10/a"]
    assert "systems.s: tls: set only with https:// runners (see base_urls)" in error_of(
        {"systems": {"s": {"type": "rpc", "base_urls": mixed, "tls": {}}}}
    )
    assert "systems.s: tls: set only with https:// runners (see base_url)" in error_of(
        {"systems": {"s": {"type": "rpc", "base_url": "http://127.0.0.1:9/a", "tls": {}}}}
    )
