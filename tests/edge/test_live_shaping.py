"""A refresh applies channel shaping live (``edge.live.reshape``): aliases, response headers,
error detail and audit are compiled from the new config, then swapped in with no await, so
the next call is shaped by the new rules and nothing half-applies. The bus push end to end is
in ``tests/control/test_live_config.py``."""

from __future__ import annotations

import msgspec
import pytest
from aiohttp.test_utils import TestClient

from busgate.bus.base import Responder
from busgate.contracts.codec import json_encode
from busgate.contracts.config import Alias, Config, ConfigError, PathRule, load
from busgate.contracts.wire import Reply, Request
from busgate.edge import keys

TOML = """
[gateway]
id = "live-shaping"

[systems.demo]
type = "rpc"
base_url = "http://127.0.0.1:9/api"

[channels.demo]
system = "demo"

[channels.demo.aliases."v1/echo"]
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


async def path_of(req: Request, responder: Responder) -> None:
    """Answers with the path the runner would see."""
    body = json_encode({"path": req.path})
    await responder.reply(Reply(id=req.id, body=body, headers={"content-type": "application/json"}))


async def _path(client: TestClient, path: str, **kwargs: object) -> tuple[int, object, dict]:
    async with client.post(f"/api/request/demo/{path}", **kwargs) as resp:
        body = await resp.read()
        return resp.status, (body and (await resp.json())), dict(resp.headers)


async def _apply(client: TestClient, config: Config) -> None:
    app = client.server.app
    await app[keys.LIVE].apply(app, config)


async def test_aliases_headers_and_error_detail_apply_live(edge, config: Config) -> None:
    client, _ = await edge(config, path_of)
    assert (await _path(client, "v1/echo", json={}))[:2] == (200, {"path": "echo"})
    status, body, headers = await _path(client, "v2/echo", json={})
    assert (status, body) == (200, {"path": "v2/echo"}) and "Cache-Control" not in headers
    new = _channel(
        config,
        aliases={"v2/echo": Alias(target="echo")},
        response_headers={"Cache-Control": "no-store"},
        errors="none",
    )
    await _apply(client, new)
    status, body, headers = await _path(client, "v2/echo", json={})
    assert (status, body, headers["Cache-Control"]) == (200, {"path": "echo"}, "no-store")
    # The old alias went with the old config: its path goes to the runner as it is.
    assert (await _path(client, "v1/echo", json={}))[:2] == (200, {"path": "v1/echo"})
    # errors = "none": an error is its status only.
    bad = {"data": b"{not json", "headers": {"Content-Type": "application/json"}}
    assert (await _path(client, "echo", **bad))[:2] == (400, b"")


async def test_audit_applies_live_on_a_node_started_with_audit(edge, config: Config) -> None:
    started = _channel(config, paths={"echo": PathRule(audit=True)})
    client, _ = await edge(started)
    audit = client.server.app[keys.AUDIT]
    assert audit.channels["demo"].lookup("echo") == (True, False)
    await _apply(client, _channel(config, paths={"other": PathRule(audit=True, audit_body=True)}))
    table = audit.channels["demo"]
    assert table.lookup("echo") is None and table.lookup("other") == (True, True)


async def test_what_cannot_apply_changes_nothing(edge, config: Config) -> None:
    client, _ = await edge(config, path_of)
    live = client.server.app[keys.LIVE]
    # Audit needs its middleware, there only on a node started with audited paths.
    with pytest.raises(ConfigError, match="audit on a node that started without"):
        await _apply(
            client,
            _channel(
                config,
                paths={"echo": PathRule(audit=True)},
                response_headers={"Cache-Control": "no-store"},
            ),
        )
    bad = _channel(config, aliases={"v2/echo": Alias(target="echo", payload={"x": "a.[["})})
    with pytest.raises(ConfigError):
        await _apply(client, bad)
    assert live.config is config
    status, body, headers = await _path(client, "v2/echo", json={})
    assert (status, body) == (200, {"path": "v2/echo"}) and "Cache-Control" not in headers
