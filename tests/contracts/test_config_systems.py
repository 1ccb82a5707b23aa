"""The ``crud`` and ``rsocket`` system sections."""

import pytest

from busgate.contracts.config import ConfigError, CrudSystem, RsocketSystem, parse


def test_crud_and_rsocket_systems_parse_by_type():
    config = parse(
        {
            "systems": {
                "data": {"type": "crud", "base_url": "http://h/api/data", "timeout": 2.0},
                "rs": {"type": "rsocket", "hosts": ["a:7001", "b"], "retry_attempts": 5},
                "ws": {"type": "rsocket", "protocol": "websocket", "urls": ["ws://h/rs"]},
            }
        }
    )
    data, rs, ws = (config.systems[n] for n in ("data", "rs", "ws"))
    assert isinstance(data, CrudSystem) and data.as_rpc().base_url == "http://h/api/data"
    assert isinstance(rs, RsocketSystem) and rs.hosts == ("a:7001", "b")
    assert (rs.retry_attempts, rs.retry_duration, rs.protocol) == (5, 1.0, "tcp")
    assert isinstance(ws, RsocketSystem) and ws.urls == ("ws://h/rs",)
    assert "if-match" in config.gateway.forward_headers


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        ({"type": "rsocket", "protocol": "websocket"}, "systems.s: urls: a websocket system"),
        ({"type": "rsocket", "hosts": []}, "systems.s: hosts: a tcp system needs"),
        ({"type": "rsocket", "protocol": "quic"}, "systems.s.protocol: Invalid enum value"),
        ({"type": "rsocket", "retry_attempts": -1}, "systems.s.retry_attempts: Expected `int`"),
        ({"type": "crud"}, "systems.s: Object missing required field `base_url`"),
    ],
)
def test_bad_systems_name_their_key(system, expected):
    with pytest.raises(ConfigError) as info:
        parse({"systems": {"s": system}})
    assert str(info.value).startswith(expected), str(info.value)


def test_browsers_may_send_if_match_and_read_etag_by_default():
    cors = parse({}).gateway.cors
    assert {"if-match", "if-none-match"} <= set(cors.headers)
    assert "etag" in cors.expose_headers
