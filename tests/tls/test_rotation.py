"""Rotation under steady load: hundreds of new HTTPS connections a second (from another
process), the certificate files replaced mid-way; no handshake may fail, the old certificate
is served until ``grace`` has passed, the new one after, and a connection opened before the
change carries on with its certificate."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path

import trustme

from tests.tls.certs import write_leaf
from tests.tls.conftest import client_context

GRACE = 1.0
SECONDS = 4.0


async def keep_alive_call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    return int(lines[0].split(b" ")[1])


def replace(path: str, by: str) -> None:
    Path(path).write_bytes(Path(by).read_bytes())


def fingerprint_of(path: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = x509.load_pem_x509_certificates(Path(path).read_bytes())[0]
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


async def test_rotation_under_load(tls_edge, ca: trustme.CA, server_files, tmp_path) -> None:
    cert, key = server_files
    old = fingerprint_of(cert)
    async with tls_edge(poll=0.1, grace=GRACE) as edge:
        ctx = client_context(edge.ca)
        held_reader, held = await asyncio.open_connection(
            "127.0.0.1", edge.port, ssl=ctx, server_hostname="127.0.0.1"
        )
        held_der = held.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert await keep_alive_call(held_reader, held) == 200

        load = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.tls.load", str(edge.port), edge.ca, str(SECONDS),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        output = asyncio.create_task(load.communicate())
        await asyncio.sleep(1.0)  # load before the change
        new_cert, new_key = write_leaf(ca.issue_cert("127.0.0.1", "localhost"), tmp_path, "n")
        new = fingerprint_of(new_cert)
        replace(key, new_key)  # the key first: a torn pair for a poll or two
        replace(cert, new_cert)
        written = time.time()
        await asyncio.wait_for(edge.certs.watch.changed(), GRACE + 5)
        swapped = time.time()
        out, _ = await output
        assert load.returncode == 0

        assert await keep_alive_call(held_reader, held) == 200  # the connection carried on
        assert held.get_extra_info("ssl_object").getpeercert(binary_form=True) == held_der
        held.close()
        await held.wait_closed()

    calls = [json.loads(line) for line in out.splitlines()]
    failed = [c for c in calls if c[2]]
    span = calls[-1][0] - min(c[0] for c in calls)
    rate = len(calls) / SECONDS
    print(
        f"\nrotation: {len(calls)} new TLS connections in {SECONDS:g}s ({rate:.0f}/s), "
        f"{len(failed)} failed; new certificate served {swapped - written:.2f}s after the "
        f"files changed (grace {GRACE:g}s, poll 0.1s); span {span:.1f}s"
    )
    assert not failed, failed[:3]
    # Hundreds a second on an idle 2-core machine; with seven other test runs on it, under
    # a hundred. The floor only makes sure the load was steady across the change.
    assert rate >= 50
    assert GRACE <= swapped - written <= GRACE + 0.5  # not before the grace, soon after
    # handshakes done before the grace ended got the old certificate; those begun after the
    # swap, the new one
    assert {c[1] for c in calls if c[3] < written + GRACE} == {old}
    after = [c for c in calls if c[0] > swapped]
    assert len(after) > 50 and {c[1] for c in after} == {new}
