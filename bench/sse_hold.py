"""Opens N idle SSE streams and holds them, in a process of its own, so the harness can read
the edge's RSS while they are open. Raw asyncio sockets rather than an HTTP client keep the
holder itself small. Prints ``OPEN <ok> <failed> <first error>`` once all are attempted, then
holds until stdin closes or SIGTERM.

    python -m bench.sse_hold http://127.0.0.1:8080/api/stream/demo/count --count 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
import sys
from urllib.parse import urlsplit

from bench.scenarios import STREAM_BODY

ATTEMPTS = 3


async def open_stream(host: str, port: int, path: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(STREAM_BODY)}\r\n\r\n"
        ).encode()
        + STREAM_BODY
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status = head.split(b" ", 2)[1]
    if status != b"200" or b"text/event-stream" not in head.lower():
        writer.close()
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    return writer


async def hold(url: str, count: int, parallel: int) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    gate = asyncio.Semaphore(parallel)
    writers: list[asyncio.StreamWriter] = []
    errors: list[str] = []

    async def one() -> None:
        # What is measured is holding streams, not the rate of opening them: a stream
        # that could not open under the burst is tried again before it counts as failed.
        error = ""
        for _ in range(ATTEMPTS):
            async with gate:
                try:
                    writers.append(await open_stream(host, port, parts.path))
                    return
                except (OSError, RuntimeError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.5)
        errors.append(error)

    await asyncio.gather(*(one() for _ in range(count)))
    first = errors[0] if errors else "-"
    print(f"OPEN {len(writers)} {len(errors)} {first}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)  # stdin closed: the harness is done
    await stop.wait()
    for w in writers:
        w.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=100)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.count + 1024)), hard))
    asyncio.run(hold(args.url, args.count, args.parallel))


if __name__ == "__main__":
    main()
