"""CORS: preflights answered at the edge, headers on actual answers (errors too)."""

from __future__ import annotations

from tests.edge.auth_support import (  # noqa: F401  (fixtures)
    auth_config,
    secured_fixture,
    session_store_fixture,
)

CORS = {
    "origins": ["https://app.example.com"],
    "origin_patterns": [r"https://[a-z0-9-]+\.preview\.example\.com"],
    "credentials": True,
    "max_age": 600,
}


def preflight(origin: str, method: str = "POST", headers: str = "content-type, authorization"):
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


async def test_preflight_from_an_allowed_origin(secured):
    s = await secured(auth_config(gateway={"cors": CORS}))
    resp = await s.client.options(
        "/api/request/secure/meta", headers=preflight("https://app.example.com")
    )
    assert resp.status == 204
    h = resp.headers
    assert h["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert h["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in h["Access-Control-Allow-Methods"]
    assert h["Access-Control-Allow-Headers"] == "content-type, authorization"
    assert h["Access-Control-Max-Age"] == "600"
    assert "Origin" in h["Vary"]
    assert s.provider.calls == []  # answered at the edge, not across the bus


async def test_preflight_from_an_origin_pattern(secured):
    s = await secured(auth_config(gateway={"cors": CORS}))
    origin = "https://pr-42.preview.example.com"
    resp = await s.client.options("/api/request/secure/meta", headers=preflight(origin))
    assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == origin


async def test_preflight_from_a_refused_origin(secured):
    s = await secured(auth_config(gateway={"cors": CORS}))
    for origin in ("https://evil.example.net", "https://app.example.com.evil.net"):
        resp = await s.client.options("/api/request/secure/meta", headers=preflight(origin))
        assert resp.status == 403 and no_allow_headers(resp)
        assert "origin" in (await resp.json())["error"]["message"]


def no_allow_headers(resp) -> bool:
    return not [h for h in resp.headers if h.lower().startswith("access-control-")]


async def test_preflight_asking_for_a_method_or_header_not_allowed(secured):
    """Issue 8 item 10: from an allowed origin too, a refused preflight carries no
    ``Access-Control-*`` header (it used to get Allow-Origin and Allow-Credentials)."""
    cors = {**CORS, "methods": ["GET", "POST"]}
    s = await secured(auth_config(gateway={"cors": cors}))
    origin = "https://app.example.com"
    resp = await s.client.options("/api/request/secure/meta", headers=preflight(origin, "DELETE"))
    assert resp.status == 403 and "method" in (await resp.json())["error"]["message"]
    assert no_allow_headers(resp), dict(resp.headers)
    resp = await s.client.options(
        "/api/request/secure/meta", headers=preflight(origin, headers="x-custom")
    )
    assert resp.status == 403 and "headers" in (await resp.json())["error"]["message"]
    assert no_allow_headers(resp), dict(resp.headers)


async def test_actual_answers_carry_the_headers_errors_included(secured):
    s = await secured(auth_config(gateway={"cors": CORS}))
    origin = {"Origin": "https://app.example.com"}
    resp = await s.client.get("/api/request/demo/meta", headers=origin)
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "x-request-id" in resp.headers["Access-Control-Expose-Headers"]
    resp = await s.client.get("/api/request/secure/meta", headers=origin)
    assert resp.status == 401  # the browser can read why
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "www-authenticate" in resp.headers["Access-Control-Expose-Headers"]
    resp = await s.client.get(
        "/api/request/demo/meta", headers={"Origin": "https://evil.example.net"}
    )
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


async def test_any_origin_without_credentials(secured):
    s = await secured(auth_config(gateway={"cors": {"origins": ["*"]}}))
    resp = await s.client.options(
        "/api/request/demo/meta", headers=preflight("https://anywhere.test", "GET", "")
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in resp.headers


async def test_no_origins_configured_refuses_every_preflight(secured):
    s = await secured()
    resp = await s.client.options(
        "/api/request/demo/meta", headers=preflight("https://app.example.com")
    )
    assert resp.status == 405  # CORS is not even installed: OPTIONS has no route
    assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await s.client.get("/api/request/demo/meta", headers={"Origin": "https://a.test"})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
