"""A refresh cannot half-apply channel shaping: the edge compiles aliases, response headers,
error detail and audit once, so a refresh that changes them is refused (restart), while one
that changes anything else applies (``edge.live``)."""

from __future__ import annotations

import msgspec
import pytest
from aiohttp import web

from busgate.contracts.config import Alias, Channel, Config, ConfigError, PathRule, load
from busgate.edge.live import LiveConfig

TOML = """
[gateway]
id = "live-shaping"

[systems.demo]
type = "rpc"
base_url = "http://127.0.0.1:9/api"

[channels.demo]
system = "demo"

[channels.demo.aliases."v1/echo/{id}"]
target = "echo"
"""


@pytest.fixture
def config(tmp_path) -> Config:
    path = tmp_path / "busgate.toml"
    path.write_text(TOML)
    return load(path, env={})


def _channel(config: Config, **changes: object) -> Config:
    demo = msgspec.structs.replace(config.channels["demo"], **changes)
    return msgspec.structs.replace(config, channels={**config.channels, "demo": demo})


@pytest.mark.parametrize(
    "changes",
    [
        {"aliases": {"v2/echo/{id}": Alias(target="echo")}},
        {"response_headers": {"Cache-Control": "no-store"}},
        {"errors": "code"},
        {"paths": {"echo": PathRule(audit=True)}},
    ],
)
async def test_a_shaping_change_is_refused(config: Config, changes: dict[str, object]) -> None:
    live = LiveConfig(config)
    with pytest.raises(ConfigError, match="restart this edge"):
        await live.apply(web.Application(), _channel(config, **changes))
    assert live.config is config


async def test_other_changes_apply(config: Config) -> None:
    live = LiveConfig(config)
    changed = _channel(config, timeout=3.0)
    changed = msgspec.structs.replace(
        changed, channels={**changed.channels, "added": Channel(system="demo")}
    )
    await live.apply(web.Application(), changed)
    assert live.config is changed
