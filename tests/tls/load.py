"""Load for the rotation test, in its own process (a core of its own): new HTTPS connections
back to back from ``WORKERS`` tasks for ``SECONDS``; one JSON line per call on stdout:
``[wall-clock start, sha256 of the certificate served, error or "", wall-clock end of the
handshake]``.

``python -m tests.tls.load PORT CAFILE SECONDS``
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import sys
import time

WORKERS = 16


async def one_call(port: int, ctx: ssl.SSLContext) -> list[object]:
    started, fingerprint, error, shaken = time.time(), "", "", 0.0
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
        )
        shaken = time.time()
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        fingerprint = hashlib.sha256(der).hexdigest()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        if not data.startswith(b"HTTP/1.1 200"):
            error = data[:40].decode(errors="replace")
    except (OSError, ssl.SSLError) as exc:
        error = repr(exc)
    return [started, fingerprint, error, shaken]


async def main(port: int, cafile: str, seconds: float) -> None:
    ctx = ssl.create_default_context(cafile=cafile)
    end = time.monotonic() + seconds
    calls: list[list[object]] = []

    async def worker() -> None:
        while time.monotonic() < end:
            calls.append(await one_call(port, ctx))

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    sys.stdout.write("".join(json.dumps(c) + "\n" for c in calls))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], float(sys.argv[3])))
