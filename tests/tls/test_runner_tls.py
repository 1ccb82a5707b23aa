"""The adapter's TLS to runners: the real sample runner behind HTTPS that requires client
certificates (mTLS); the client certificate rotated from its files."""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from busgate.adapters.rpc.client import RpcClient
from busgate.brokers import free_port
from busgate.contracts import errors
from busgate.contracts.codec import json_decode
from busgate.contracts.config import ConfigError, Gateway, parse
from busgate.contracts.wire import Request
from busgate.runners.rpc import create_app
from tests.tls.certs import write_ca, write_leaf

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def request(path: str) -> Request:
    return Request(
        id="gw-x-1",
        traceparent=TRACEPARENT,
        channel="demo",
        system="demo",
        path=path,
        body=b"{}",
        deadline=time.time() + 5,
    )


@contextlib.asynccontextmanager
async def https_runner(app: web.Application, ctx: ssl.SSLContext) -> AsyncIterator[int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
        yield port
    finally:
        await runner.cleanup()


def runner_context(ca: trustme.CA, client_ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    client_ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def rpc(port: int, **tls: object) -> RpcClient:
    config = parse(
        {
            "systems": {
                "demo": {
                    "type": "rpc",
                    "base_url": f"https://127.0.0.1:{port}/api/demo",
                    "tls": tls,
                }
            }
        }
    )
    return RpcClient("demo", config.systems["demo"], Gateway())


async def test_mtls_to_a_runner_that_requires_it(tmp_path: Path) -> None:
    ca, client_ca = trustme.CA(), trustme.CA()
    cafile = write_ca(ca, tmp_path, "ca")
    cert, key = write_leaf(client_ca.issue_cert("adapter"), tmp_path, "adapter")
    stranger = write_leaf(trustme.CA().issue_cert("adapter"), tmp_path, "stranger")
    async with https_runner(create_app(), runner_context(ca, client_ca)) as port:
        client = rpc(port, ca=cafile, cert=cert, key=key)
        try:
            reply = await client.call(request("meta"))
            assert reply.status == 200
            assert json_decode(reply.body)["requestId"] == "gw-x-1"
        finally:
            await client.close()
        for tls in ({"ca": cafile}, {"ca": cafile, "cert": stranger[0], "key": stranger[1]}):
            client = rpc(port, **tls)  # no certificate / one the runner does not trust
            try:
                with pytest.raises(errors.UpstreamUnreachable):
                    await client.call(request("meta"))
            finally:
                await client.close()
        client = rpc(port)  # the runner's CA is not in the system's trust store
        try:
            with pytest.raises(errors.UpstreamUnreachable):
                await client.call(request("meta"))
        finally:
            await client.close()


async def test_client_certificate_rotates(tmp_path: Path) -> None:
    ca, client_ca = trustme.CA(), trustme.CA()
    cafile = write_ca(ca, tmp_path, "ca")
    cert, key = write_leaf(client_ca.issue_cert("x", common_name="first"), tmp_path, "adapter")

    async def whoami(request: web.Request) -> web.Response:
        assert request.transport is not None
        peer = request.transport.get_extra_info("peercert")
        cn = next(v for rdn in peer["subject"] for k, v in rdn if k == "commonName")
        return web.json_response(cn)

    app = web.Application()
    app.router.add_post("/api/demo/whoami", whoami)
    async with https_runner(app, runner_context(ca, client_ca)) as port:
        client = rpc(port, ca=cafile, cert=cert, key=key, poll=60.0)
        try:
            assert json_decode((await client.call(request("whoami"))).body) == "first"
            second = write_leaf(client_ca.issue_cert("x", common_name="second"), tmp_path, "n")
            Path(cert).write_bytes(Path(second[0]).read_bytes())  # noqa: ASYNC240
            Path(key).write_bytes(Path(second[1]).read_bytes())  # noqa: ASYNC240
            assert client.tls is not None and client.tls.watch is not None
            client.tls.watch.check()  # one poll
            assert json_decode((await client.call(request("whoami"))).body) == "second"
        finally:
            await client.close()


def test_key_not_matching_names_the_system_key(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, _ = write_leaf(ca.issue_cert("a"), tmp_path, "a")
    _, other = write_leaf(ca.issue_cert("b"), tmp_path, "b")
    with pytest.raises(ConfigError, match=r"systems\.demo\.tls\.key \(.*b\.key\)"):
        rpc(1, cert=cert, key=other)


def test_tls_needs_https() -> None:
    with pytest.raises(ConfigError, match="https://"):
        parse({"systems": {"demo": {"type": "rpc", "base_url": "http://x", "tls": {}}}})


async def test_a_changed_ca_file_is_taken_without_restart(tmp_path: Path) -> None:
    """Only the CA file of a system changes (no client certificate involved): a runner
    whose certificate the old file does not vouch for is refused before, reached after."""
    old_ca, new_ca = trustme.CA(), trustme.CA()
    cafile = write_ca(old_ca, tmp_path, "ca")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    new_ca.issue_cert("127.0.0.1").configure_cert(server)
    async with https_runner(create_app(), server) as port:
        client = rpc(port, ca=cafile, poll=60.0)
        try:
            with pytest.raises(errors.UpstreamUnreachable):
                await client.call(request("meta"))
            Path(cafile).write_bytes(old_ca.cert_pem.bytes() + new_ca.cert_pem.bytes())  # noqa: ASYNC240
            assert client.tls is not None and client.tls.watch is not None
            client.tls.watch.check()  # one poll
            assert (await client.call(request("meta"))).status == 200
        finally:
            await client.close()
