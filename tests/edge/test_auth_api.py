"""``POST /api/auth/{register|login|refresh|logout|delete}/{channel}/{type}`` on a memory bus."""

from __future__ import annotations

import base64
from http.cookies import SimpleCookie

import jwt
import pytest

from tests.edge.auth_support import (  # noqa: F401  (secured_fixture: the fixture)
    PASSWORD,
    SECRET,
    auth_config,
    secured_fixture,
)

LOGIN = "/api/auth/login/auth/password"
REFRESH = "/api/auth/refresh/auth/password"
LOGOUT = "/api/auth/logout/auth/password"


def set_cookies(resp) -> dict[str, SimpleCookie]:
    """Each Set-Cookie header parsed on its own (so attributes can be checked)."""
    out = {}
    for header in resp.headers.getall("Set-Cookie", []):
        cookie = SimpleCookie()
        cookie.load(header)
        for name in cookie:
            out[name] = cookie[name]
    return out


def decode(token: str) -> dict:
    return jwt.decode(token, SECRET, algorithms=["HS512"], audience="busgate")


# -- login and register ------------------------------------------------------------------


async def test_login_answers_a_token_pair(secured):
    s = await secured()
    tokens = await s.login()
    assert set(tokens) == {"access_token", "refresh_token", "token_type", "expires_in"}
    access, refresh = decode(tokens["access_token"]), decode(tokens["refresh_token"])
    assert (access["sub"], access["typ"], access["roles"]) == ("demo", "access", ["user"])
    assert access["exp"] - access["iat"] == 900
    assert (refresh["typ"], refresh["sid"]) == ("refresh", access["sid"])
    assert refresh["exp"] - refresh["iat"] == pytest.approx(86_400, abs=2)
    login_call = [c for c in s.provider.calls if c.system == "auth"][-1]
    assert login_call.path == "login/password" and login_call.identity is None


async def test_login_with_basic_credentials(secured):
    s = await secured()
    basic = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    resp = await s.client.post(LOGIN, headers={"Authorization": f"Basic {basic}"})
    assert resp.status == 200
    assert decode((await resp.json())["access_token"])["sub"] == "admin"


async def test_wrong_password_and_unknown_user_look_the_same(secured):
    s = await secured()
    answers = []
    for username, password in (("demo", "wrong password"), ("nobody", PASSWORD)):
        resp = await s.client.post(LOGIN, json={"username": username, "password": password})
        body = await resp.json()
        answers.append((resp.status, body["error"]["code"], body["error"]["message"]))
    assert answers[0] == answers[1] == (401, "unauthorized", "invalid username or password")


async def test_login_needs_credentials(secured):
    s = await secured()
    resp = await s.client.post(LOGIN, json={"username": "demo"})
    assert resp.status == 400
    resp = await s.client.post(LOGIN, data=b"username=demo", headers={"Content-Type": "text/plain"})
    assert resp.status == 415


async def test_register_then_use_the_token(secured):
    s = await secured()
    resp = await s.client.post(
        "/api/auth/register/auth/password", json={"username": "neo", "password": "s3cret-pw"}
    )
    assert resp.status == 200
    token = (await resp.json())["access_token"]
    resp, body = await s.get("/api/request/secure/meta", token)
    assert resp.status == 200 and body["identity"]["subject"] == "neo"
    resp = await s.client.post(
        "/api/auth/register/auth/password", json={"username": "neo", "password": "s3cret-pw"}
    )
    assert resp.status == 409  # the provider's refusal passes through


async def test_unknown_auth_channel_and_action(secured):
    s = await secured()
    resp = await s.client.post("/api/auth/login/demo/password", json={})
    assert resp.status == 404  # a channel without auth
    resp = await s.client.post("/api/auth/shout/auth/password", json={})
    assert resp.status == 404


async def test_thru_returns_the_providers_answer_without_removed_claims(secured):
    s = await secured()
    tokens = await s.login(thru="true")
    assert tokens["data"] == {"id": 2, "username": "demo", "roles": ["user"], "internal": {}}


async def test_remember_gives_the_long_refresh_lifetime(secured):
    s = await secured()
    refresh = decode((await s.login(remember="true"))["refresh_token"])
    assert refresh["exp"] - refresh["iat"] == pytest.approx(30 * 86_400, abs=2)


# -- cookies ----------------------------------------------------------------------------


async def test_cookie_flags(secured):
    s = await secured()
    resp = await s.client.post(
        LOGIN, json={"username": "demo", "password": PASSWORD}, params={"cookie": "true"}
    )
    assert resp.status == 200
    body = await resp.json()
    assert "access_token" not in body and "refresh_token" not in body
    cookies = set_cookies(resp)
    access, refresh = cookies["busgate_access"], cookies["busgate_refresh"]
    assert access["path"] == "/api"
    assert refresh["path"] == "/api/auth/refresh"
    for c in (access, refresh):
        assert c["httponly"] and c["secure"]
        assert c["samesite"] == "Strict"
        assert c["max-age"] == ""  # a session cookie unless remember=true
    assert decode(access.value)["sub"] == "demo"
    assert resp.headers["Cache-Control"] == "no-store"


async def test_remembered_cookies_persist(secured):
    s = await secured(auth_config(token={"cookies": {"same_site": "Lax", "domain": "example.com"}}))
    resp = await s.client.post(
        LOGIN,
        json={"username": "demo", "password": PASSWORD},
        params={"cookie": "true", "remember": "true"},
    )
    cookies = set_cookies(resp)
    assert int(cookies["busgate_refresh"]["max-age"]) > 29 * 86_400
    assert cookies["busgate_access"]["samesite"] == "Lax"
    assert cookies["busgate_access"]["domain"] == "example.com"


async def test_the_access_cookie_authenticates(secured):
    s = await secured(auth_config(token={"cookies": {"secure": False}}))
    await s.client.post(
        LOGIN, json={"username": "demo", "password": PASSWORD}, params={"cookie": "true"}
    )
    resp, body = await s.get("/api/request/secure/meta")
    assert resp.status == 200 and body["identity"]["subject"] == "demo"


# -- refresh ----------------------------------------------------------------------------


async def test_refresh_rotates_the_refresh_token(secured):
    s = await secured()
    tokens = await s.login()
    resp = await s.client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})
    assert resp.status == 200
    fresh = await resp.json()
    assert fresh["refresh_token"] != tokens["refresh_token"]
    old, new = decode(tokens["access_token"]), decode(fresh["access_token"])
    assert (new["sid"], new["sub"], new["roles"], new["uid"]) == (
        old["sid"],
        "demo",
        ["user"],
        2,
    )
    resp, _ = await s.get("/api/request/secure/meta", fresh["access_token"])
    assert resp.status == 200
    # The new refresh token works in turn.
    resp = await s.client.post(REFRESH, json={"refresh_token": fresh["refresh_token"]})
    assert resp.status == 200


async def test_reused_refresh_token_revokes_the_whole_session(secured):
    s = await secured()
    tokens = await s.login()
    resp = await s.client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})
    fresh = await resp.json()
    resp = await s.client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})
    assert resp.status == 401
    assert "already used" in (await resp.json())["error"]["message"]
    # Every token of the session is dead now: old and new access tokens, new refresh token.
    for token in (tokens["access_token"], fresh["access_token"]):
        resp, body = await s.get("/api/request/secure/meta", token)
        assert resp.status == 401 and "revoked" in body["error"]["message"]
    resp = await s.client.post(REFRESH, json={"refresh_token": fresh["refresh_token"]})
    assert resp.status == 401
    # Another login is another session, unaffected.
    other = await s.login()
    resp, _ = await s.get("/api/request/secure/meta", other["access_token"])
    assert resp.status == 200


async def test_refresh_refuses_access_tokens_and_garbage(secured):
    s = await secured()
    tokens = await s.login()
    for token in (tokens["access_token"], "garbage"):
        resp = await s.client.post(REFRESH, json={"refresh_token": token})
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await s.client.post(REFRESH, json={})
    assert resp.status == 401


async def test_refresh_by_cookie_sets_new_cookies(secured):
    s = await secured(auth_config(token={"cookies": {"secure": False}}))
    resp = await s.client.post(
        LOGIN, json={"username": "demo", "password": PASSWORD}, params={"cookie": "true"}
    )
    first = set_cookies(resp)["busgate_refresh"].value
    resp = await s.client.post(REFRESH)  # the client sends the refresh cookie on this path
    assert resp.status == 200, await resp.text()
    assert set_cookies(resp)["busgate_refresh"].value != first


# -- logout and delete ----------------------------------------------------------------


async def test_logout_revokes_the_session(secured):
    s = await secured()
    tokens = await s.login()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    resp = await s.client.post(LOGOUT, headers=headers)
    assert resp.status == 200
    resp, body = await s.get("/api/request/secure/meta", tokens["access_token"])
    assert resp.status == 401 and "revoked" in body["error"]["message"]
    resp = await s.client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})
    assert resp.status == 401


async def test_logout_by_cookie_clears_the_cookies(secured):
    s = await secured(auth_config(token={"cookies": {"secure": False}}))
    await s.client.post(
        LOGIN, json={"username": "demo", "password": PASSWORD}, params={"cookie": "true"}
    )
    resp = await s.client.post(LOGOUT)
    assert resp.status == 200
    cleared = set_cookies(resp)
    assert cleared["busgate_access"].value == "" and cleared["busgate_access"]["max-age"] == "0"
    resp, _ = await s.get("/api/request/secure/meta")
    assert resp.status == 401


async def test_logout_needs_a_token(secured):
    s = await secured()
    resp = await s.client.post(LOGOUT)
    assert resp.status == 401
    resp = await s.client.post(LOGOUT, headers={"Authorization": "Bearer nonsense"})
    assert resp.status == 401


async def test_delete_removes_the_user_and_ends_the_session(secured):
    s = await secured()
    tokens = await s.login()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    resp = await s.client.post("/api/auth/delete/auth/password", headers=headers)
    assert resp.status == 200, await resp.text()
    delete_call = next(c for c in s.provider.calls if c.path == "delete/password")
    assert delete_call.identity.subject == "demo"
    resp, _ = await s.get("/api/request/secure/meta", tokens["access_token"])
    assert resp.status == 401
    resp = await s.client.post(LOGIN, json={"username": "demo", "password": PASSWORD})
    assert resp.status == 401
    resp = await s.client.post("/api/auth/delete/auth/password")
    assert resp.status == 401


# -- CSRF and grace ---------------------------------------------------------------------


async def test_csrf_double_submit(secured):
    s = await secured(
        auth_config(token={"cookies": {"secure": False}}, gateway={"csrf": {"enabled": True}})
    )
    resp = await s.client.post(
        LOGIN, json={"username": "demo", "password": PASSWORD}, params={"cookie": "true"}
    )
    csrf = (await resp.json())["csrf_token"]
    assert set_cookies(resp)["busgate_csrf"].value == csrf
    assert not set_cookies(resp)["busgate_csrf"]["httponly"]  # scripts must read it
    resp = await s.client.post("/api/request/secure/meta", json={})
    assert resp.status == 403 and "CSRF" in (await resp.json())["error"]["message"]
    resp = await s.client.post(
        "/api/request/secure/meta", json={}, headers={"X-CSRF-Token": csrf + "x"}
    )
    assert resp.status == 403
    resp = await s.client.post("/api/request/secure/meta", json={}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 200
    resp, _ = await s.get("/api/request/secure/meta")  # safe methods need none
    assert resp.status == 200
    resp = await s.client.post(LOGOUT)  # logout by cookie is state-changing too
    assert resp.status == 403


async def test_csrf_spares_bearer_calls(secured):
    s = await secured(auth_config(gateway={"csrf": {"enabled": True}}))
    tokens = await s.login()
    s.client.session.cookie_jar.update_cookies({"busgate_access": "stale"})
    resp = await s.client.post(
        "/api/request/secure/meta",
        json={},
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert resp.status == 200


async def test_a_cookie_token_near_expiry_is_renewed(secured):
    s = await secured(auth_config(token={"cookies": {"secure": False}, "grace": 10_000}))
    resp = await s.client.post(
        LOGIN, json={"username": "demo", "password": PASSWORD}, params={"cookie": "true"}
    )
    first = set_cookies(resp)["busgate_access"].value
    resp = await s.client.get("/api/request/secure/meta")
    assert resp.status == 200
    renewed = set_cookies(resp)["busgate_access"].value
    assert renewed != first
    assert decode(renewed)["sid"] == decode(first)["sid"]


async def test_no_renewal_outside_the_grace_period(secured):
    s = await secured(auth_config(token={"cookies": {"secure": False}, "grace": 10}))
    await s.client.post(
        LOGIN, json={"username": "demo", "password": PASSWORD}, params={"cookie": "true"}
    )
    resp = await s.client.get("/api/request/secure/meta")
    assert resp.status == 200 and "Set-Cookie" not in resp.headers


async def test_a_provider_answer_without_a_subject_is_a_502(secured):
    s = await secured(
        auth_config(token={"claims": [{"name": "sub", "source": "login"}]})  # not "username"
    )
    resp = await s.client.post(LOGIN, json={"username": "demo", "password": PASSWORD})
    assert resp.status == 502
    assert "no subject" in (await resp.json())["error"]["message"]
