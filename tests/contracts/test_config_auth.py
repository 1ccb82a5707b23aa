"""The auth parts of the config schema: tokens, path rules, CORS; errors name key paths."""

import pytest

from busgate.contracts.config import ConfigError, apply_env, parse

SECRET = "env:SOME_SECRET"
BASE = {
    "systems": {"demo": {"type": "rpc", "base_url": "http://127.0.0.1:9/api/demo"}},
    "tokens": {"main": {"secret": SECRET}},
}


def channel(**fields):
    return {**BASE, "channels": {"secure": {"system": "demo", "auth": "main", **fields}}}


def error_of(raw) -> str:
    with pytest.raises(ConfigError) as info:
        parse(raw)
    return str(info.value)


def test_a_secured_channel():
    config = parse(
        channel(paths={"admin/*": {"roles": {"*": ["admin"]}}, "health": {"public": True}})
    )
    ch = config.channels["secure"]
    assert ch.auth == "main"
    assert ch.paths["admin/*"].roles == {"*": ("admin",)}
    token = config.tokens["main"]
    assert (token.algorithm, token.expiration, token.max_size) == ("HS512", 900, 4096)
    assert token.cookies.path == "/api" and token.cookies.refresh_path == "/api/auth/refresh"
    assert config.gateway.cors.enabled and config.gateway.cors.origins == ()
    assert not config.gateway.csrf.enabled


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            channel(paths={"admin/*": {"roles": {"GET": "admin"}}}),
            'channels.secure.paths."admin/*".roles.GET: Expected `array`, got `str`',
        ),
        (
            channel(paths={"admin/*": {"rolez": {}}}),
            'channels.secure.paths."admin/*": Object contains unknown field `rolez`',
        ),
        (
            channel(paths={"admin/*": {"roles": {"FETCH": ["a"]}}}),
            "channels.secure.paths.\"admin/*\": roles: unknown method(s) ['FETCH']",
        ),
        (channel(paths={"a*b": {}}), 'channels.secure: paths."a*b": use "*", "prefix/*"'),
        (channel(auth="nope"), "channels.secure.auth: unknown token 'nope'"),
        (
            {**BASE, "tokens": {"main": {"algorithm": "RS256"}}},
            "tokens.main: algorithm RS256: set private_key and public_key",
        ),
        ({**BASE, "tokens": {"main": {}}}, "tokens.main: algorithm HS512: set secret"),
        (
            {**BASE, "tokens": {"main": {"secret": SECRET, "algorithm": "none"}}},
            "tokens.main.algorithm: Invalid enum value 'none'",
        ),
        (
            {**BASE, "tokens": {"main": {"secret": SECRET, "claims": [{"name": "exp"}]}}},
            "tokens.main.claims[0]: claim 'exp': give exactly one of source, value, special",
        ),
        (
            {
                **BASE,
                "tokens": {"main": {"secret": SECRET, "api_keys": {"ci": {"hash": "plain"}}}},
            },
            "tokens.main.api_keys.ci: hash: expected 'sha256:'",
        ),
        (
            {
                **BASE,
                "tokens": {
                    "main": {
                        "secret": SECRET,
                        "verifiable": {"jwks_url": "u", "algorithms": ["HS256"]},
                    }
                },
            },
            "tokens.main.verifiable.algorithms[0]: Invalid enum value 'HS256'",
        ),
        (
            {**BASE, "gateway": {"cors": {"origins": ["*"], "credentials": True}}},
            "gateway.cors: origins: '*' cannot be combined with credentials = true",
        ),
        (
            {**BASE, "gateway": {"cors": {"origin_patterns": ["(["]}}},
            "gateway.cors: origin_patterns: '([' is not a regex",
        ),
    ],
)
def test_errors_name_the_key_path(raw, expected):
    assert error_of(raw).startswith(expected)


def test_env_overrides_a_token_secret():
    raw = apply_env(
        {"tokens": {"main": {"secret": "env:X"}}}, {"BUSGATE__TOKENS__MAIN__SECRET": "file:/s"}
    )
    assert parse({**BASE, **raw}).tokens["main"].secret == "file:/s"
