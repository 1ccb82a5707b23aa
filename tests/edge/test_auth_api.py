"""``POST /api/auth/{register|login|refresh|logout|delete}/{channel}/{type}``: the edge on a
memory bus (the provider is a fake), its sessions in process memory and on the real stores of
both buses (NATS KV, a compacted Kafka topic), with two edge nodes where it matters."""

from __future__ import annotations

import asyncio
import base64
import time
from http.cookies import SimpleCookie

import jwt
import msgspec
import pytest

from tests.edge.auth_support import (  # noqa: F401  (secured_fixture: fixtures)
    PASSWORD,
    SECRET,
    STORES,
    auth_config,
    secured_fixture,
)

LOGIN = "/api/auth/login/auth/password"
REFRESH = "/api/auth/refresh/auth/password"
LOGOUT = "/api/auth/logout/auth/password"
DELETE = "/api/auth/delete/auth/password"
REGISTER = "/api/auth/register/auth/password"


@pytest.fixture(params=STORES)
def session_store(request: pytest.FixtureRequest) -> str:
    """Every test here runs on each store (see ``auth_support.store_kind``)."""
    return str(request.param)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def until(sessions, condition, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        await sessions.wait_until(condition)


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
    for hostile in ("é" + csrf[1:], "\u2026"):  # non-ASCII: a 500 once (compare_digest)
        resp = await s.client.post(
            "/api/request/secure/meta", json={}, headers={"X-CSRF-Token": hostile}
        )
        assert resp.status == 403 and "CSRF" in (await resp.json())["error"]["message"]
    resp = await s.client.post("/api/request/secure/meta", json={}, headers={"X-CSRF-Token": csrf})
    assert resp.status == 200
    resp, _ = await s.get("/api/request/secure/meta")  # safe methods need none
    assert resp.status == 200
    resp = await s.client.post(LOGOUT)  # logout by cookie is state-changing too
    assert resp.status == 403


async def test_a_planted_csrf_cookie_with_a_matching_header_is_refused(secured):
    """Issue 8 item 10: an attacker who can set cookies for the site (a sibling subdomain,
    plain HTTP) plants ``busgate_csrf`` and sends the same value in the header; the token is
    an HMAC of the victim's session, so that is refused -- as is a real token of another
    session (the attacker's own login)."""
    config = auth_config(token={"cookies": {"secure": False}}, gateway={"csrf": {"enabled": True}})
    s = await secured(config)
    resp = await s.client.post(
        LOGIN, json={"username": "admin", "password": PASSWORD}, params={"cookie": "true"}
    )
    attackers = (await resp.json())["csrf_token"]
    victim = await s.edge()
    resp = await victim.post(
        LOGIN, json={"username": "demo", "password": PASSWORD}, params={"cookie": "true"}
    )
    real = (await resp.json())["csrf_token"]
    assert real != attackers
    for planted in ("planted-by-the-attacker", attackers):
        victim.session.cookie_jar.update_cookies({"busgate_csrf": planted})
        resp = await victim.post(
            "/api/request/secure/meta", json={}, headers={"X-CSRF-Token": planted}
        )
        assert resp.status == 403, planted
        assert "CSRF" in (await resp.json())["error"]["message"]
    # The session's own token passes, whatever the CSRF cookie holds now.
    resp = await victim.post("/api/request/secure/meta", json={}, headers={"X-CSRF-Token": real})
    assert resp.status == 200
    # It stays the session's token across a refresh (the session id does not change).
    resp = await victim.post(REFRESH, headers={"X-CSRF-Token": real})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["csrf_token"] == real


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


# -- issue 8 item 6: account deletion, re-registration, maximum age ----------------------


async def test_delete_ends_every_session_of_the_account_on_every_edge(secured):
    """Two logins of one user; deleting the account from one session ends the other too:
    its access and refresh tokens are refused on another edge node."""
    s = await secured()
    other = await s.edge()
    first, second = await s.login(), await s.login()
    sid = decode(second["access_token"])["sid"]
    await until(other.sessions, lambda: other.sessions.cached(sid) is not None)
    resp = await s.client.post(DELETE, headers=bearer(first["access_token"]))
    assert resp.status == 200, await resp.text()
    await until(other.sessions, lambda: other.sessions.is_revoked(sid, "demo"))
    resp = await other.get("/api/request/secure/meta", headers=bearer(second["access_token"]))
    assert resp.status == 401 and "revoked" in (await resp.json())["error"]["message"]
    resp = await other.post(REFRESH, json={"refresh_token": second["refresh_token"]})
    assert resp.status == 401
    resp, _ = await s.get("/api/request/secure/meta", second["access_token"])
    assert resp.status == 401


async def test_an_old_session_does_not_act_as_a_new_account_of_the_same_name(secured):
    """Even where the provider's subject is the username (this fake's), a session from
    before the deletion stays dead after the name is registered again."""
    s = await secured()
    other = await s.edge()
    old, kept = await s.login(), await s.login()
    resp = await s.client.post(DELETE, headers=bearer(old["access_token"]))
    assert resp.status == 200
    resp = await s.client.post(REGISTER, json={"username": "demo", "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    new = await resp.json()
    new_sid = decode(new["access_token"])["sid"]
    await until(other.sessions, lambda: other.sessions.cached(new_sid) is not None)
    for client in (s.client, other):
        resp = await client.get("/api/request/secure/meta", headers=bearer(kept["access_token"]))
        assert resp.status == 401
        resp = await client.get("/api/request/secure/meta", headers=bearer(new["access_token"]))
        assert resp.status == 200
    resp = await other.post(REFRESH, json={"refresh_token": kept["refresh_token"]})
    assert resp.status == 401
    resp = await other.post(REFRESH, json={"refresh_token": new["refresh_token"]})
    assert resp.status == 200


async def test_refresh_past_the_sessions_maximum_age_is_refused(secured):
    s = await secured(auth_config(token={"session_max_age": 600}))
    tokens = await s.login()
    payload = decode(tokens["refresh_token"])
    assert payload["exp"] <= time.time() + 600  # the refresh lifetime is capped too
    resp = await s.client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})
    assert resp.status == 200
    tokens = await resp.json()
    # The session started 601 s ago (written to the shared store, as another edge would).
    found = await s.sessions.get(payload["sid"])
    assert found is not None
    aged = msgspec.structs.replace(found[0], created=found[0].created - 601)
    assert await s.sessions.replace(aged, found[1])
    resp = await s.client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})
    assert resp.status == 401
    assert "maximum age" in (await resp.json())["error"]["message"]


async def test_concurrent_refresh_on_two_edges_has_one_winner_and_ends_the_session(secured):
    """The same refresh token at once on two edges: one rotation wins, the other is a reuse,
    which revokes the session (its new tokens included)."""
    s = await secured()
    other = await s.edge()
    tokens = await s.login()
    sid = decode(tokens["access_token"])["sid"]
    await until(other.sessions, lambda: other.sessions.cached(sid) is not None)
    body = {"refresh_token": tokens["refresh_token"]}
    answers = await asyncio.gather(
        s.client.post(REFRESH, json=body), other.post(REFRESH, json=body)
    )
    assert sorted(r.status for r in answers) == [200, 401]
    winner = await next(r for r in answers if r.status == 200).json()
    for node in (s.sessions, other.sessions):
        await until(node, lambda n=node: n.is_revoked(sid))
    resp, _ = await s.get("/api/request/secure/meta", winner["access_token"])
    assert resp.status == 401
