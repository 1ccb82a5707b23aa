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
    assert config.systems["demo"].timeout == 30.0
    assert config.channels["demo"].methods == ("GET", "POST", "PUT", "PATCH", "DELETE")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"gateway": {"max_body": "big"}}, "gateway.max_body: Expected `int`, got `str`"),
        ({"gateway": {"lisen": "x"}}, "gateway: Object contains unknown field `lisen`"),
        ({"gateway": {"return_ids": "sometimes"}}, "gateway.return_ids: Invalid enum value"),
        ({"systems": {"s1": {"type": "rpc"}}}, "systems.s1: Object missing required field"),
        (
            {"systems": {"s1": {"type": "rpc", "base_url": "u", "timeout": "slow"}}},
            "systems.s1.timeout: Expected `float`, got `str`",
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
