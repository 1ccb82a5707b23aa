"""HTTP/1.1 over a plain socket, for what a well-behaved client library refuses to send
(stray header bytes, broken request lines) and for reading the exact bytes of an answer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class RawAnswer:
    status: int
    head: bytes
    headers: dict[str, str]
    body: bytes


def parse(data: bytes) -> RawAnswer:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1]) if lines and lines[0] else 0
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return RawAnswer(status, head, headers, body)


async def exchange(port: int, data: bytes, host: str = "127.0.0.1") -> RawAnswer:
    """Send ``data`` as it is, read until the server closes (send ``Connection: close``);
    callers bound it with ``asyncio.timeout`` where a hang is possible."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    return parse(answer)


def request(
    method: str, target: str, *headers: bytes, body: bytes = b"", host: bytes = b"x"
) -> bytes:
    """A request with raw header lines (``b"Name: value"``), closing the connection after."""
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: " + host, b"Connection: close"]
    lines += headers
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
