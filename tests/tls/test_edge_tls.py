"""HTTPS at the edge with real TLS clients: Python ``ssl``/aiohttp, curl, openssl s_client."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import trustme

from busgate.contracts.config import ConfigError, parse
from busgate.edge.tls_server import ServerCerts
from tests.tls.certs import uri_leaf, write_leaf
from tests.tls.conftest import client_context
from tests.tls.test_rotation import fingerprint_of

ROLES = {"billing": ["admin"]}


async def get(url: str, ctx: ssl.SSLContext) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(url, ssl=ctx) as resp:
        return resp.status, await resp.json()


async def run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


async def test_https_and_the_minimum_version(tls_edge) -> None:
    async with tls_edge() as edge:
        status, _ = await get(f"{edge.url}/healthz", client_context(edge.ca))
        assert status == 200
        assert edge.certs.context.minimum_version == ssl.TLSVersion.TLSv1_2  # the default
    async with tls_edge(min_version="TLSv1.3") as edge:
        tls12 = client_context(edge.ca)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(aiohttp.ClientConnectorError):
            await get(f"{edge.url}/healthz", tls12)
        status, _ = await get(f"{edge.url}/healthz", client_context(edge.ca))
        assert status == 200


async def test_client_auth_none_ignores_certificates(tls_edge, client_ca, tmp_path) -> None:
    """Without client_auth no certificate is asked for: a secured path wants a token."""
    cert = write_leaf(client_ca.issue_cert("x", common_name="billing"), tmp_path, "billing")
    async with tls_edge() as edge:
        status, _ = await get(f"{edge.url}/api/request/secure/x", client_context(edge.ca, cert))
        assert status == 401


async def test_optional_identity_from_cn_reaches_runner(tls_edge, client_ca, tmp_path) -> None:
    cert = write_leaf(client_ca.issue_cert("x", common_name="billing"), tmp_path, "billing")
    async with tls_edge(client_auth="optional", identity={"roles": ROLES}) as edge:
        # with a certificate: its identity, roles from the mapping (admin/* needs admin)
        status, body = await get(
            f"{edge.url}/api/request/secure/admin/x", client_context(edge.ca, cert)
        )
        assert status == 200, body
        assert body["identity"] == {
            "subject": "billing",
            "roles": ["admin"],
            "claims": {"amr": ["mtls"]},
        }
        # without: anonymous, so a public path answers and a secured one wants a token
        status, body = await get(f"{edge.url}/api/request/secure/public/x", client_context(edge.ca))
        assert status == 200 and body["identity"] is None
        status, body = await get(f"{edge.url}/api/request/secure/x", client_context(edge.ca))
        assert status == 401


async def test_certificate_identity_on_a_channel_without_tokens(
    tls_edge, client_ca, tmp_path
) -> None:
    """A channel without ``auth`` lets everyone in, but its runner still learns who called."""
    cert = write_leaf(client_ca.issue_cert("x", common_name="billing"), tmp_path, "billing")
    async with tls_edge(client_auth="optional") as edge:
        status, body = await get(f"{edge.url}/api/request/demo/x", client_context(edge.ca, cert))
        assert status == 200 and body["identity"]["subject"] == "billing"
        status, body = await get(f"{edge.url}/api/request/demo/x", client_context(edge.ca))
        assert status == 200 and body["identity"] is None


async def test_identity_from_uri_san_and_default_roles(tls_edge, client_ca, tmp_path) -> None:
    cert = uri_leaf(client_ca, tmp_path, "svc", cn="ignored", uri="spiffe://busgate/orders")
    identity = {"subject": "uri", "default_roles": ["service"]}
    async with tls_edge(client_auth="require", identity=identity) as edge:
        status, body = await get(f"{edge.url}/api/request/secure/x", client_context(edge.ca, cert))
    assert status == 200, body
    assert body["identity"]["subject"] == "spiffe://busgate/orders"
    assert body["identity"]["roles"] == ["service"]


async def test_require_refuses_at_the_handshake(tls_edge, ca, client_ca, tmp_path) -> None:
    """No certificate, an untrusted one, an expired one: refused before any HTTP (curl)."""
    good = write_leaf(client_ca.issue_cert("x", common_name="billing"), tmp_path, "good")
    stranger = write_leaf(trustme.CA().issue_cert("x", common_name="billing"), tmp_path, "bad")
    past = datetime.now(UTC) - timedelta(days=2)
    expired = write_leaf(
        client_ca.issue_cert(
            "x", common_name="billing", not_before=past, not_after=past + timedelta(days=1)
        ),
        tmp_path,
        "expired",
    )
    async with tls_edge(client_auth="require", identity={"roles": ROLES}) as edge:
        url = f"{edge.url}/api/request/secure/admin/x"
        base = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", edge.ca]
        code, out = await run(*base, "--cert", good[0], "--key", good[1], url)
        assert (code, out) == (0, "200")
        for cert in (None, stranger, expired):
            args = (
                [*base, url] if cert is None else [*base, "--cert", cert[0], "--key", cert[1], url]
            )
            code, out = await run(*args)
            assert code != 0 and "000" in out, (cert, out)  # no HTTP status at all
        # openssl s_client: the server asks for a certificate from the client CA
        code, out = await run(
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{edge.port}",
            "-CAfile",
            edge.ca,
            "-cert",
            good[0],
            "-key",
            good[1],
            "-verify_return_error",
            "-brief",
        )
        assert "Verification: OK" in out, out


async def test_wrong_host_is_refused_by_the_client(tls_edge, ca, tmp_path) -> None:
    """A server certificate for another host fails the client's check (curl)."""
    cert, key = write_leaf(ca.issue_cert("elsewhere.example"), tmp_path, "elsewhere")
    async with tls_edge(cert=cert, key=key) as edge:
        code, out = await run("curl", "-sS", "--cacert", edge.ca, f"{edge.url}/healthz")
    assert code == 60 and "no alternative certificate subject name" in out.lower(), out


def tls_config(**tls: str) -> object:
    return parse({"gateway": {"tls": tls}}).gateway.tls


def test_key_not_matching_is_a_config_error_naming_the_key(ca, tmp_path) -> None:
    cert, _ = write_leaf(ca.issue_cert("127.0.0.1"), tmp_path, "a")
    _, other_key = write_leaf(ca.issue_cert("127.0.0.1"), tmp_path, "b")
    with pytest.raises(ConfigError, match=r"gateway\.tls\.key \(.*b\.key\): the private key"):
        ServerCerts(tls_config(cert=cert, key=other_key))  # type: ignore[arg-type]


def test_config_needs_a_ca_for_client_auth() -> None:
    with pytest.raises(ConfigError, match=r"gateway\.tls.*set ca"):
        parse({"gateway": {"tls": {"cert": "c", "key": "k", "client_auth": "require"}}})


async def test_unparsable_file_keeps_the_previous_certificate(
    tls_edge, server_files, caplog
) -> None:
    cert, _ = server_files
    async with tls_edge(poll=0.05, grace=0) as edge:
        before = edge.certs.watch.current
        Path(cert).write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")  # noqa: ASYNC240
        with caplog.at_level(logging.WARNING, "busgate.tls"):
            edge.certs.watch.check()
        assert "not a PEM certificate" in caplog.text and "stays in service" in caplog.text
        assert edge.certs.watch.current is before
        status, _ = await get(f"{edge.url}/healthz", client_context(edge.ca))
        assert status == 200


def test_self_signed_is_renewed_before_expiry(monkeypatch) -> None:
    from busgate.tls import watch

    source = watch.self_signed_source(("127.0.0.1",), lifetime=100.0, renew_before=10.0)
    first = source()
    assert source() is first
    now = first.not_after.timestamp()
    monkeypatch.setattr(watch.time, "time", lambda: now - 11.0)
    assert source() is first
    monkeypatch.setattr(watch.time, "time", lambda: now - 9.0)
    assert source().fingerprint != first.fingerprint


async def test_client_auth_still_holds_after_a_rotation(
    tls_edge, ca, client_ca, server_files, tmp_path
) -> None:
    """The context a rotation builds asks for and verifies client certificates too."""
    cert = write_leaf(client_ca.issue_cert("x", common_name="billing"), tmp_path, "billing")
    async with tls_edge(client_auth="require", poll=60, grace=0) as edge:
        new = write_leaf(ca.issue_cert("127.0.0.1"), tmp_path, "new")
        for path, by in zip(server_files, new, strict=True):
            Path(path).write_bytes(Path(by).read_bytes())  # noqa: ASYNC240
        edge.certs.watch.check()  # one poll; grace 0: current at once
        ctx = client_context(edge.ca, cert)
        _, writer = await asyncio.open_connection("127.0.0.1", edge.port, ssl=ctx)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()
        assert hashlib.sha256(der).hexdigest() == fingerprint_of(new[0])  # the new one
        status, body = await get(f"{edge.url}/api/request/secure/x", client_context(edge.ca, cert))
        assert status == 200 and body["identity"]["subject"] == "billing"
        with pytest.raises(aiohttp.ClientError):
            await get(f"{edge.url}/api/request/secure/x", client_context(edge.ca))


async def test_a_changed_client_ca_file_is_taken_without_restart(
    tls_edge, client_ca, tmp_path
) -> None:
    """Only the CA file changes (a new client CA added): a certificate from the new CA is
    refused before and accepted after, at the next poll -- without waiting for ``grace``,
    which is for the edge's own certificate."""
    new_ca = trustme.CA()
    newcomer = write_leaf(new_ca.issue_cert("x", common_name="billing"), tmp_path, "newcomer")
    async with tls_edge(client_auth="require", poll=0.05, grace=60) as edge:
        url = f"{edge.url}/api/request/secure/x"
        with pytest.raises(aiohttp.ClientError):
            await get(url, client_context(edge.ca, newcomer))
        cafile = edge.certs.watch.ca
        changed = asyncio.ensure_future(edge.certs.watch.changed())
        started = time.monotonic()
        Path(cafile).write_bytes(client_ca.cert_pem.bytes() + new_ca.cert_pem.bytes())  # noqa: ASYNC240
        await asyncio.wait_for(changed, 5)
        took = time.monotonic() - started
        status, body = await get(url, client_context(edge.ca, newcomer))
        assert status == 200 and body["identity"]["subject"] == "billing"
        print(f"client CA file change taken in {took * 1000:.0f} ms (poll 50 ms)")
