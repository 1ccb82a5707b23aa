"""Client credentials against a real token endpoint over HTTP: kept until ``margin`` before
expiry (end to end, with a revoked token, in tests/e2e/test_shaping.py)."""

from __future__ import annotations

import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from busgate.adapters.rpc.client import RpcClient
from busgate.contracts import errors
from busgate.contracts.config import ConfigError, Gateway, RpcSystem, RunnerAuth
from busgate.contracts.wire import Request

FETCHES = web.AppKey("fetches", list[int])


def token_app() -> web.Application:
    """A token endpoint (``/token``) and a runner (``/api/x/SAGA``) echoing its token."""
    app = web.Application()
    app[FETCHES] = [0]

    async def token(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Basic aWQ6czNjcjN0":  # id:s3cr3t
            return web.json_response({"error": "invalid_client"}, status=401)
        app[FETCHES][0] += 1
        return web.json_response({"access_token": f"t{app[FETCHES][0]}", "expires_in": 10})

    async def saga(request: web.Request) -> web.Response:
        return web.json_response({"auth": request.headers.get("Authorization")})

    app.router.add_post("/token", token)
    app.router.add_post("/api/x/{saga}", saga)
    return app


@pytest.fixture
async def server():
    running = TestServer(token_app())
    await running.start_server()
    yield running
    await running.close()


def client(server, margin: float, secret: str = "s3cr3t") -> RpcClient:
    auth = RunnerAuth(token_url="/token", client_id="id", client_secret=secret, margin=margin)
    system = RpcSystem(base_url=str(server.make_url("/api/x")), auth=auth)
    return RpcClient("x", system, Gateway())


def request() -> Request:
    return Request(id="r1", path="s", body=b"{}", deadline=time.time() + 5)


@pytest.mark.parametrize(("margin", "fetches"), [(0.0, 1), (30.0, 3)])
async def test_a_token_is_kept_until_margin_before_it_expires(server, margin, fetches):
    rpc = client(server, margin)  # expires_in 10 s: with a 30 s margin it is never good
    try:
        for _ in range(3):
            reply = await rpc.call(request())
            assert reply.status == 200 and reply.body.startswith(b'{"auth": "Bearer t')
    finally:
        await rpc.close()
    assert server.app[FETCHES][0] == fetches


async def test_refused_credentials_are_a_502_and_the_secret_must_resolve(server):
    rpc = client(server, 0.0, secret="wrong")
    try:
        with pytest.raises(errors.UpstreamError, match="refused the client credentials"):
            await rpc.call(request())
    finally:
        await rpc.close()
    with pytest.raises(ConfigError, match=r"systems\.x\.auth\.client_secret"):
        client(server, 0.0, secret="env:BUSGATE_TEST_UNSET_SECRET")


async def test_an_https_token_endpoint_is_reached_with_the_systems_tls(tmp_path):
    """The token fetch trusts what the runner calls trust (``[systems.S.tls]``'s CA): an
    https token URL on the runner's host works with a private CA."""
    import ssl

    from busgate.contracts.config import ClientTls
    from busgate.tls.self_signed import generate

    pair = generate(("127.0.0.1",), 3600.0)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    secure = TestServer(token_app())
    await secure.start_server(ssl=context)
    auth = RunnerAuth(token_url="/token", client_id="id", client_secret="s3cr3t")
    base = str(secure.make_url("/api/x"))
    assert base.startswith("https://")
    system = RpcSystem(base_url=base, auth=auth, tls=ClientTls(ca=str(cert)))
    rpc = RpcClient("x", system, Gateway())
    try:
        reply = await rpc.call(request())
        assert reply.status == 200 and reply.body.startswith(b'{"auth": "Bearer t')
    finally:
        await rpc.close()
        await secure.close()
