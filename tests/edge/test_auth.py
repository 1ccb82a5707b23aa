"""The auth middleware: every way a call can be refused, and what passes on to the runner."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from yarl import URL

from busgate.edge import keys
from tests.edge.auth_support import (  # noqa: F401  (fixtures)
    API_KEY,
    SECRET,
    Secured,
    auth_config,
    secured_fixture,
    session_store_fixture,
    write_keys,
)


def claims(**over) -> dict:
    now = int(time.time())
    base = {
        "iss": "busgate",
        "aud": "busgate",
        "sub": "demo",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "sid": "s1",
        "typ": "access",
        "roles": ["user"],
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def forge(payload: dict, key: str | bytes = SECRET, alg: str = "HS512", **header) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": "main", **header})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def assert_401(s: Secured, token: str | None, fragment: str, path="/api/request/secure/meta"):
    resp, body = await s.get(path, token)
    assert resp.status == 401, body
    assert fragment in body["error"]["message"]
    assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="busgate"')
    assert body["error"]["requestId"] == resp.headers["X-Request-Id"]
    return resp


# -- what passes ------------------------------------------------------------------------


async def test_a_valid_token_reaches_the_runner_with_the_identity(secured):
    s = await secured()
    tokens = await s.login()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 900
    resp, body = await s.get("/api/request/secure/meta", tokens["access_token"])
    assert resp.status == 200
    identity = body["identity"]
    assert identity["subject"] == "demo"
    assert identity["roles"] == ["user"]
    assert identity["claims"] == {"uid": 2}  # registered claims and removed ones left out
    assert identity["session_id"]


async def test_the_identity_carries_custom_claims_but_never_removed_ones(secured):
    s = await secured()
    tokens = await s.login()
    payload = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert payload["uid"] == 2 and "secret_note" not in payload
    _, body = await s.get("/api/request/secure/meta", tokens["access_token"])
    assert "secret_note" not in body["identity"]["claims"]


async def test_public_channel_and_public_path_need_no_token(secured):
    s = await secured()
    resp, body = await s.get("/api/request/demo/meta")
    assert resp.status == 200 and body["identity"] is None
    resp, body = await s.get("/api/request/secure/public/x")
    assert resp.status == 200 and body["identity"] is None


async def test_public_path_still_forwards_a_valid_identity(secured):
    s = await secured()
    tokens = await s.login()
    _, body = await s.get("/api/request/secure/public/x", tokens["access_token"])
    assert body["identity"]["subject"] == "demo"


async def test_admin_role_reaches_the_admin_path(secured):
    s = await secured()
    tokens = await s.login("admin")
    resp, body = await s.get("/api/request/secure/admin/meta", tokens["access_token"])
    assert resp.status == 200
    assert body["identity"]["roles"] == ["user", "admin"]


async def test_a_repeated_token_is_verified_once(secured):
    s = await secured()
    tokens = await s.login()
    service = s.client.app[keys.AUTH].tokens["main"]
    before = service.verified
    for _ in range(5):
        resp, _ = await s.get("/api/request/secure/meta", tokens["access_token"])
        assert resp.status == 200
    assert service.verified == before + 1


# -- every rejection ---------------------------------------------------------------------


async def test_missing_token_is_401_with_a_challenge(secured):
    s = await secured()
    resp = await assert_401(s, None, "needs a token")
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="busgate"'
    assert s.provider.calls == []


async def test_malformed_authorization_header(secured):
    s = await secured()
    resp, body = await s.get("/api/request/secure/meta", Authorization="Token abc")
    assert resp.status == 401 and "Bearer" in body["error"]["message"]


async def test_expired_token(secured):
    s = await secured()
    now = int(time.time())
    resp = await assert_401(s, forge(claims(iat=now - 600, nbf=now - 600, exp=now - 5)), "expired")
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_token_not_valid_yet(secured):
    s = await secured()
    await assert_401(s, forge(claims(nbf=int(time.time()) + 120)), "not valid yet")


async def test_wrong_issuer(secured):
    s = await secured()
    await assert_401(s, forge(claims(iss="someone-else")), "another issuer")


async def test_wrong_audience(secured):
    s = await secured()
    await assert_401(s, forge(claims(aud="another-api")), "another audience")


async def test_tampered_signature(secured):
    s = await secured()
    header, payload, signature = forge(claims()).split(".")
    forged_payload = b64(json.dumps(claims(roles=["admin"])).encode())
    await assert_401(s, f"{header}.{forged_payload}.{signature}", "signature")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    await assert_401(s, f"{header}.{payload}.{flipped}", "signature")


async def test_alg_none_is_refused(secured):
    s = await secured()
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "main"}).encode())
    payload = b64(json.dumps(claims(roles=["admin"])).encode())
    await assert_401(s, f"{header}.{payload}.", "algorithm")


async def test_a_token_signed_with_another_secret(secured):
    s = await secured()
    await assert_401(s, forge(claims(), key="x" * 64), "signature")


async def test_hs_token_signed_with_the_rs_public_key_is_refused(secured, tmp_path):
    """Key confusion: with RS256 configured, an HS256 token whose HMAC key is the public
    key's PEM (which an attacker knows) must not verify."""
    private, public = write_keys(tmp_path, "rsa")
    s = await secured(
        auth_config(
            token={
                "algorithm": "RS256",
                "private_key": f"file:{private}",
                "public_key": f"file:{public}",
            }
        )
    )
    tokens = await s.login()
    resp, _ = await s.get("/api/request/secure/meta", tokens["access_token"])
    assert resp.status == 200  # the RS256 tokens themselves work
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "main"}).encode())
    payload = b64(json.dumps(claims(roles=["admin"])).encode())
    pem = Path(public).read_bytes()  # noqa: ASYNC240
    signature = b64(hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    await assert_401(s, f"{header}.{payload}.{signature}", "algorithm")


async def test_oversized_token_is_refused_before_parsing(secured):
    s = await secured()
    big = forge(claims(padding="x" * 5000))
    assert 4096 < len(big) < 8000  # under aiohttp's own header limit
    await assert_401(s, big, "longer than 4096")


async def test_refresh_token_is_not_an_access_token(secured):
    s = await secured()
    tokens = await s.login()
    await assert_401(s, tokens["refresh_token"], "not an access token")


async def test_revoked_session_is_refused(secured):
    s = await secured()
    tokens = await s.login()
    resp, _ = await s.get("/api/request/secure/meta", tokens["access_token"])
    assert resp.status == 200
    sid = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]
    await s.sessions.revoke(sid)
    await assert_401(s, tokens["access_token"], "revoked")


async def test_wrong_role_is_403(secured):
    s = await secured()
    tokens = await s.login()
    resp, body = await s.get("/api/request/secure/admin/meta", tokens["access_token"])
    assert resp.status == 403
    assert body["error"]["code"] == "forbidden" and "admin" in body["error"]["message"]
    assert "WWW-Authenticate" not in resp.headers
    assert [c.path for c in s.provider.calls if c.system == "demo"] == []


async def test_roles_per_method(secured):
    s = await secured()
    tokens = await s.login()
    resp, _ = await s.get("/api/request/secure/billing/x", tokens["access_token"])
    assert resp.status == 200  # GET: any authenticated caller
    resp = await s.client.post(
        "/api/request/secure/billing/x",
        json={},
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert resp.status == 403  # POST: role "service"
    resp = await s.client.post(
        "/api/request/secure/billing/x", json={}, headers={"X-Api-Key": API_KEY}
    )
    assert resp.status == 200
    assert (await resp.json())["identity"] == {"subject": "billing", "roles": ["service"]}


async def test_wrong_api_key(secured):
    s = await secured()
    resp, body = await s.get("/api/request/secure/meta", **{"X-Api-Key": API_KEY + "x"})
    assert resp.status == 401 and "API key" in body["error"]["message"]


async def test_disabled_path_is_404_like_a_missing_route(secured):
    s = await secured()
    tokens = await s.login("admin")
    resp, body = await s.get("/api/request/secure/old/thing", tokens["access_token"])
    assert resp.status == 404 and body["error"]["code"] == "not_found"
    resp, body = await s.get("/api/request/auth/login/password")
    assert resp.status == 404  # the auth channel only answers the auth API
    assert s.provider.calls == [c for c in s.provider.calls if c.system == "auth"]


@pytest.mark.parametrize("path", ["x/../admin/meta", "x/./admin/meta", "admin/%2E%2E/meta"])
async def test_dot_segments_are_refused(secured, path):
    """A runner's HTTP client would resolve them, so a rule checked on the raw path could be
    dodged (``x/../admin/meta`` is not under ``admin/*`` but lands there)."""
    s = await secured()
    tokens = await s.login()
    url = URL(str(s.client.make_url("/api/request/secure/")) + path, encoded=True)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with s.client.session.get(url, headers=headers) as resp:
        assert resp.status == 400, await resp.text()
        assert "segments" in (await resp.json())["error"]["message"]
    assert [c for c in s.provider.calls if c.system == "demo"] == []


async def test_can_ignore_makes_a_bad_token_anonymous(secured):
    s = await secured(auth_config(token={"can_ignore": True}))
    resp, body = await s.get("/api/request/secure/public/x", "garbage")
    assert resp.status == 200 and body["identity"] is None
    await assert_401(s, "garbage", "needs a token")
    without = await secured()
    await assert_401(without, "garbage", "invalid", path="/api/request/secure/public/x")


async def test_the_cache_never_outlives_a_token(secured):
    s = await secured()
    token = forge(claims())
    resp, _ = await s.get("/api/request/secure/meta", token)
    assert resp.status == 200
    service = s.client.app[keys.AUTH].tokens["main"]
    identity, _ = service._cache[token]
    assert service.cached(token) is identity
    service._cache[token] = (identity, time.time() - 1)  # as if its exp had passed
    assert service.cached(token) is None
    assert token not in service._cache


async def test_streams_are_guarded_like_requests(secured):
    s = await secured()
    resp, _ = await s.get("/api/stream/secure/meta")
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == 'Bearer realm="busgate"'
    tokens = await s.login()
    resp, _ = await s.get("/api/stream/secure/admin/meta", tokens["access_token"])
    assert resp.status == 403
    assert [c for c in s.provider.calls if c.system == "demo"] == []
