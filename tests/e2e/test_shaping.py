"""Channel shaping end to end (issue 16): ``busgate dev`` (broker, runners, adapter, edge,
each its own process) over NATS and Kafka, with the aliases, response headers and error
levels of the dev config (``busgate/dev.toml``)."""

from __future__ import annotations

import secrets

import aiohttp
import pytest

from tests.stack import dev_stack

pytestmark = pytest.mark.e2e

PASSWORD = secrets.token_urlsafe(12)
SECRET = secrets.token_urlsafe(48)


@pytest.fixture(scope="module", params=["nats", "kafka"])
def shaped(request):
    request.applymarker(getattr(pytest.mark, request.param))
    env = {"BUSGATE_DEV_PASSWORD": PASSWORD, "BUSGATE_TOKEN_SECRET": SECRET}
    with dev_stack(request.param, env=env) as running:
        yield running


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def bearer(http, url: str, username: str = "demo") -> dict[str, str]:
    async with http.post(
        f"{url}/api/auth/login/auth/password",
        json={"username": username, "password": PASSWORD},
    ) as resp:
        assert resp.status == 200, await resp.text()
        return {"Authorization": f"Bearer {(await resp.json())['access_token']}"}


async def test_alias_parameters_and_mappings_reach_the_runner(shaped, http):
    headers = {**await bearer(http, shaped.url), "X-Tenant": "acme"}
    # The client tries to choose the tenant and the id itself: the mappings win.
    url = f"{shaped.url}/api/request/secure/v1/orders/42?tenant=evil&id=7&note=hi"
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        meta = await resp.json()
        request_id = resp.headers["X-Request-Id"]
    assert meta["path"] == "meta"  # the target, not the public alias
    assert meta["user"] == "demo"  # meta.user = identity.claims.name
    assert meta["requestId"] == request_id  # busgate's own keys are not replaced
    async with http.get(f"{shaped.runner}/calls") as resp:
        seen = [c for c in await resp.json() if c["requestId"] == request_id]
    assert [c["parameters"] for c in seen] == [{"tenant": "acme", "id": "42", "note": "hi"}]


async def test_alias_methods_are_its_own(shaped, http):
    headers = await bearer(http, shaped.url)
    url = f"{shaped.url}/api/request/secure/v1/orders/42"
    async with http.post(url, json={}, headers=headers) as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_a_public_alias_does_not_open_a_protected_target(shaped, http):
    url = f"{shaped.url}/api/request/secure/open/admin"
    async with http.get(url) as resp:  # the alias path is public, its target is not
        assert resp.status == 401
    async with http.get(url, headers=await bearer(http, shaped.url)) as resp:
        assert resp.status == 403  # admin/* needs the role admin
    async with http.get(url, headers=await bearer(http, shaped.url, "admin")) as resp:
        # The sample runner has no saga "admin/meta": its own 404 proves the call got through.
        assert resp.status == 404
        assert "no saga 'admin/meta'" in (await resp.json())["error"]


async def test_response_headers_most_specific_wins(shaped, http):
    base = f"{shaped.url}/api/request/demo"
    async with http.get(f"{base}/echo?a=1") as resp:  # path and method
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "max-age=300"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"  # the channel's
    async with http.post(f"{base}/echo", json={"a": 1}) as resp:  # path
        assert resp.headers["Cache-Control"] == "max-age=60"
    async with http.post(f"{base}/meta", json={}) as resp:  # channel
        assert resp.headers["Cache-Control"] == "no-store"
        assert "Set-Cookie" not in resp.headers
        assert resp.headers["Server"] == "busgate"


async def test_error_detail_levels(shaped, http):
    async with http.post(f"{shaped.url}/api/request/demo/fail", json={"status": 500}) as resp:
        assert resp.status == 502
        full = (await resp.json())["error"]
    assert full["code"] == "upstream_error" and "answered 500" in full["message"]
    async with http.post(f"{shaped.url}/api/request/shaped/fail", json={"status": 500}) as resp:
        assert resp.status == 502
        code = (await resp.json())["error"]
    assert code == {"code": "upstream_error", "requestId": resp.headers["X-Request-Id"]}
    async with http.post(
        f"{shaped.url}/api/request/shaped/quiet/fail", json={"status": 500}
    ) as resp:
        assert resp.status == 502
        assert await resp.read() == b""
    # The edge and adapter logs keep the detail.
    assert any("answered 500" in line for line in shaped.output)
