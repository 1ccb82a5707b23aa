"""A TLS-terminating TCP proxy, run as its own process in front of Tansu, whose broker (0.6.0)
speaks no TLS: its ``--cert``/``--key`` options are listed but cannot be given together, and
with either one the listener still answers in plaintext (a TLS handshake times out).

``python tests/tls/tls_proxy.py LISTEN_PORT TARGET_PORT CERT KEY [CA]``: with ``CA``, every
client must present a certificate signed by it (what a Kafka broker's ``ssl.client.auth=
required`` does). Prints ``ready`` once listening; each connection is piped both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main(listen: int, target: int, cert: str, key: str, ca: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if ca:
        ctx.load_verify_locations(cafile=ca)
        ctx.verify_mode = ssl.CERT_REQUIRED

    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, broker_w), pipe(broker_r, client_w))

    server = await asyncio.start_server(serve, "127.0.0.1", listen, ssl=ctx)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    args = sys.argv[1:]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            main(int(args[0]), int(args[1]), args[2], args[3], args[4] if len(args) > 4 else "")
        )
