"""The token service: algorithms, secrets, claims mapping, and external tokens via JWKS
(served by a tiny local aiohttp server)."""

from __future__ import annotations

import json
import time

import jwt
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization

from busgate.contracts import errors
from busgate.contracts.config import Claim, ConfigError, Token
from busgate.contracts.wire import Origin
from busgate.edge.tokens import (
    TokenService,
    api_key_hash,
    map_claims,
    resolve_secret,
    strip_removed,
)
from tests.edge.auth_support import SECRET, write_keys


def service(**config) -> TokenService:
    return TokenService("main", msgspec.convert({"secret": SECRET, **config}, Token))


@pytest.mark.parametrize(
    ("algorithm", "kind"), [("RS256", "rsa"), ("ES256", "ec"), ("EdDSA", "ed25519")]
)
async def test_asymmetric_algorithms_round_trip(tmp_path, algorithm, kind):
    private, public = write_keys(tmp_path, kind)
    svc = TokenService(
        "main",
        Token(algorithm=algorithm, private_key=f"file:{private}", public_key=f"file:{public}"),
    )
    token = svc.access("demo", {"roles": ["user"]}, "sid-1")
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    identity = await svc.verify(token)
    assert (identity.subject, identity.roles, identity.session_id) == ("demo", ("user",), "sid-1")
    # The same token under another key pair of the same kind does not verify.
    other = TokenService(
        "main",
        Token(
            algorithm=algorithm,
            private_key=f"file:{private}",
            public_key=f"file:{_another_public(tmp_path, kind)}",
        ),
    )
    with pytest.raises(errors.Unauthorized, match="signature"):
        await other.verify(token)


def _another_public(tmp_path, kind: str) -> str:
    sub = tmp_path / "other"
    sub.mkdir(exist_ok=True)
    return write_keys(sub, kind)[1]


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_algorithms(alg):
    svc = service(algorithm=alg)
    token = svc.access("demo", {}, "s")
    assert jwt.get_unverified_header(token)["alg"] == alg
    assert (await svc.verify(token)).subject == "demo"
    # A token of another HMAC size with the same secret is refused: one algorithm only.
    other = service(algorithm="HS512" if alg != "HS512" else "HS256")
    with pytest.raises(errors.Unauthorized, match="algorithm"):
        await other.verify(token)


def test_short_secrets_are_refused():
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        TokenService("main", Token(secret="short"))


def test_secrets_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_SECRET", "from-env")
    assert resolve_secret("env:MY_SECRET", "x") == "from-env"
    (tmp_path / "s").write_text("from-file\n")
    assert resolve_secret(f"file:{tmp_path / 's'}", "x") == "from-file"
    with pytest.raises(ConfigError, match="NOPE_NOT_SET"):
        resolve_secret("env:NOPE_NOT_SET", "tokens.main.secret")
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_secret(f"file:{tmp_path / 'missing'}", "tokens.main.secret")


def test_the_secret_never_shows_in_errors(tmp_path):
    path = tmp_path / "k"
    path.write_text("not a pem")
    with pytest.raises(ConfigError) as info:
        TokenService(
            "main", Token(algorithm="RS256", private_key=f"file:{path}", public_key=f"file:{path}")
        )
    assert "not a pem" not in str(info.value)


def test_claims_mapping():
    claims = (
        Claim(name="sub", source="user.name", required=True),
        Claim(name="roles", type="list", source="user.roles"),
        Claim(name="age", type="int", source="user.age"),
        Claim(name="vip", type="bool", source="user.vip"),
        Claim(name="tenant", value="acme"),
        Claim(name="ip", special="client_ip"),
        Claim(name="session", special="session_id"),
        Claim(name="hash", source="user.hash", remove=True),
    )
    answer = {"user": {"name": "ann", "roles": "admin", "age": "42", "vip": "true", "hash": "x"}}
    mapped = map_claims(claims, answer, session_id="s9", origin=Origin(client_ip="10.0.0.1"))
    assert mapped == {
        "sub": "ann",
        "roles": ["admin"],
        "age": 42,
        "vip": True,
        "tenant": "acme",
        "ip": "10.0.0.1",
        "session": "s9",
    }
    assert strip_removed(claims, answer) == {
        "user": {"name": "ann", "roles": "admin", "age": "42", "vip": "true"}
    }
    with pytest.raises(errors.UpstreamError, match=r"user\.name"):
        map_claims(claims, {"user": {}}, session_id="s", origin=None)
    with pytest.raises(errors.UpstreamError, match="primitives"):
        map_claims(claims, {"user": {"name": {"nested": 1}}}, session_id="s", origin=None)


def test_api_keys_are_matched_by_hash():
    svc = service(api_keys={"ci": {"hash": api_key_hash("k" * 40), "roles": ["deploy"]}})
    identity = svc.api_key("k" * 40)
    assert identity is not None and (identity.subject, identity.roles) == ("ci", ("deploy",))
    assert svc.api_key("k" * 39) is None


# -- external tokens (JWKS) ---------------------------------------------------------------


class Idp:
    """A tiny identity provider: signs tokens and serves its JWKS over HTTP."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.keys: dict[str, object] = {}
        self.served: list[str] = []
        self.hits = 0

    def add_key(self, kid: str, serve: bool = True) -> None:
        sub = self.tmp_path / kid
        sub.mkdir()
        private, _ = write_keys(sub, "rsa")
        with open(private, "rb") as f:
            self.keys[kid] = serialization.load_pem_private_key(f.read(), password=None)
        if serve:
            self.served.append(kid)

    def token(self, kid: str, **claims) -> str:
        now = int(time.time())
        payload = {
            "iss": "https://idp.test",
            "aud": "busgate-api",
            "sub": "ext-user",
            "iat": now,
            "exp": now + 300,
            "realm_access": {"roles": ["reader"]},
            **claims,
        }
        return jwt.encode(payload, self.keys[kid], algorithm="RS256", headers={"kid": kid})

    async def jwks(self, request: web.Request) -> web.Response:
        self.hits += 1
        keys = []
        for kid in self.served:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.keys[kid].public_key()))
            keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
        return web.json_response({"keys": keys})


@pytest.fixture
async def idp(tmp_path):
    provider = Idp(tmp_path)
    app = web.Application()
    app.router.add_get("/jwks.json", provider.jwks)
    server = TestServer(app)
    await server.start_server()
    provider.url = str(server.make_url("/jwks.json"))
    yield provider
    await server.close()


def external(idp: Idp, **verifiable) -> TokenService:
    return service(
        verifiable={
            "jwks_url": idp.url,
            "issuer": "https://idp.test",
            "audience": "busgate-api",
            "roles_claim": "realm_access.roles",
            "refetch_interval": 0,
            **verifiable,
        }
    )


async def test_external_token_verified_against_the_jwks(idp):
    idp.add_key("k1")
    svc = external(idp)
    identity = await svc.verify(idp.token("k1"))
    assert (identity.subject, identity.roles, identity.session_id) == (
        "ext-user",
        ("reader",),
        None,
    )
    await svc.verify(idp.token("k1", sub="another"))
    assert idp.hits == 1  # keys are cached
    # Our own tokens still work beside the external ones.
    assert (await svc.verify(svc.access("own", {}, "s"))).subject == "own"
    await svc.close()


async def test_unknown_kid_refetches_then_refuses(idp):
    idp.add_key("k1")
    idp.add_key("rogue", serve=False)
    svc = external(idp)
    await svc.verify(idp.token("k1"))
    with pytest.raises(errors.Unauthorized, match="unknown key"):
        await svc.verify(idp.token("rogue"))
    assert idp.hits == 2  # the unknown kid made it look again
    await svc.close()


async def test_a_rotated_key_is_picked_up(idp):
    idp.add_key("k1")
    svc = external(idp)
    await svc.verify(idp.token("k1"))
    idp.add_key("k2")  # the provider rotates: k2 appears in its JWKS
    identity = await svc.verify(idp.token("k2"))
    assert identity.subject == "ext-user"
    assert idp.hits == 2
    await svc.close()


async def test_unknown_kid_refetch_is_rate_limited(idp):
    idp.add_key("k1")
    idp.add_key("rogue", serve=False)
    svc = external(idp, refetch_interval=60)
    await svc.verify(idp.token("k1"))
    for _ in range(3):
        with pytest.raises(errors.Unauthorized, match="unknown key"):
            await svc.verify(idp.token("rogue"))
    assert idp.hits == 1  # garbage kids cannot make us hammer the provider
    await svc.close()


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"iss": "https://evil.test"}, "Issuer"),
        ({"aud": "someone-else"}, "Audience"),
        ({"exp": int(time.time()) - 10}, "expired"),
    ],
)
async def test_external_token_claims_are_checked(idp, claims, message):
    idp.add_key("k1")
    svc = external(idp)
    with pytest.raises(errors.Unauthorized, match=message):
        await svc.verify(idp.token("k1", **claims))
    await svc.close()


async def test_external_token_with_a_symmetric_alg_is_refused(idp):
    idp.add_key("k1")
    svc = external(idp)
    now = int(time.time())
    forged = jwt.encode(
        {"sub": "x", "exp": now + 60, "iss": "https://idp.test", "aud": "busgate-api"},
        "x" * 64,
        algorithm="HS256",
        headers={"kid": "k1"},
    )
    with pytest.raises(errors.Unauthorized, match="algorithm"):
        await svc.verify(forged)
    await svc.close()
