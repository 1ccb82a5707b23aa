"""Throughput of ``/api/file`` against the store's own client, for one file of ``--mb`` MiB.

Starts NATS, moto's S3 server (``--store s3``) and ``busgate edge`` as processes on loopback
ports; then, per round, uploads the file through the edge (streamed from disk) and downloads
it (streamed to disk), and copies the same file with the store's own client: fsspec's
``put``/``get`` (a plain copy for a local folder, s3fs for S3). Prints MB/s and the ratios.

    .venv/bin/python -m bench.files --mb 200 --rounds 3 --store local --store s3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import fsspec

from busgate.brokers import NatsServer, free_port, wait_for_port

MIB = 1024 * 1024
CHUNK = MIB
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}
SECRET = secrets.token_urlsafe(48)


def token() -> str:
    from busgate.contracts.config import Token
    from busgate.edge.tokens import TokenService

    return TokenService("main", Token(secret=SECRET)).access("bench", {"roles": []}, "s")


async def from_file(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


async def through_edge(url: str, source: Path, target: Path) -> tuple[float, float]:
    headers = {"Authorization": f"Bearer {token()}"}
    async with aiohttp.ClientSession() as http:
        started = time.perf_counter()
        async with http.post(f"{url}?name=bench.bin", data=from_file(source), headers=headers) as r:
            assert r.status == 201, await r.text()
        up = time.perf_counter() - started
        started = time.perf_counter()
        async with http.get(f"{url}/bench.bin", headers=headers) as r:
            assert r.status == 200
            with target.open("wb") as f:
                async for chunk in r.content.iter_chunked(CHUNK):
                    f.write(chunk)
        down = time.perf_counter() - started
        async with http.delete(f"{url}/bench.bin", headers=headers) as r:
            assert r.status == 204
    return up, down


def with_client(
    fs: fsspec.AbstractFileSystem, root: str, source: Path, target: Path
) -> tuple[float, float]:
    started = time.perf_counter()
    fs.put_file(str(source), f"{root}/direct.bin")
    up = time.perf_counter() - started
    started = time.perf_counter()
    fs.get_file(f"{root}/direct.bin", str(target))
    down = time.perf_counter() - started
    fs.rm_file(f"{root}/direct.bin")
    return up, down


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", action="append", choices=["local", "s3"])
    args = parser.parse_args()
    stores = args.store or ["local", "s3"]
    work = Path(tempfile.mkdtemp(prefix="busgate-bench-files-"))
    source, target = work / "source.bin", work / "target.bin"
    with source.open("wb") as f:
        for _ in range(args.mb):
            f.write(secrets.token_bytes(MIB))
    folder = work / "store"
    folder.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, **FAKE_AWS, "BENCH_FILES_SECRET": SECRET}
    try:
        with NatsServer() as nats:
            moto_url = ""
            if "s3" in stores:
                port = free_port()
                moto = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                )
                procs.append(moto)
                wait_for_port("127.0.0.1", port, 30, moto)
                moto_url = f"http://127.0.0.1:{port}"
            s3 = None
            if moto_url:
                s3 = fsspec.filesystem(
                    "s3",
                    endpoint_url=moto_url,
                    key=FAKE_AWS["AWS_ACCESS_KEY_ID"],
                    secret=FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
                )
            if s3 is not None:
                s3.mkdir("bench")
            listen = free_port()
            config = work / "edge.toml"
            config.write_text(
                f"""
[gateway]
id = "bench"
bus = "{nats.url}"
listen = "127.0.0.1:{listen}"
[tokens.main]
secret = "env:BENCH_FILES_SECRET"
[services.local]
type = "file"
token = "main"
url = "file://{folder}"
max_size = {2 * args.mb * MIB}
[services.s3]
type = "file"
token = "main"
url = "s3://bench/files"
max_size = {2 * args.mb * MIB}
options.endpoint_url = "{moto_url or "http://127.0.0.1:9"}"
"""
            )
            edge = subprocess.Popen(
                [sys.executable, "-m", "busgate", "edge", "--config", str(config)],
                env={k: v for k, v in env.items() if not k.startswith("BUSGATE__")},
                stderr=subprocess.DEVNULL,
            )
            procs.append(edge)
            wait_for_port("127.0.0.1", listen, 30, edge)
            base = f"http://127.0.0.1:{listen}/api/file"
            for store in stores:
                fs, root = (
                    (s3, "bench/direct")
                    if store == "s3"
                    else (fsspec.filesystem("file"), str(folder / "direct"))
                )
                assert fs is not None
                fs.makedirs(root, exist_ok=True)
                edge_up, edge_down, own_up, own_down = [], [], [], []
                for _ in range(args.rounds):  # alternated, so that noise hits both alike
                    up, down = asyncio.run(through_edge(f"{base}/{store}", source, target))
                    assert target.stat().st_size == source.stat().st_size
                    edge_up.append(up)
                    edge_down.append(down)
                    up, down = with_client(fs, root, source, target)
                    own_up.append(up)
                    own_down.append(down)
                rate = lambda times: args.mb / min(times)  # noqa: E731 - best of the rounds
                print(
                    f"{store:5} {args.mb} MiB, best of {args.rounds}: "
                    f"upload edge {rate(edge_up):6.0f} MiB/s vs own client {rate(own_up):6.0f} "
                    f"({rate(edge_up) / rate(own_up):.2f}x); "
                    f"download edge {rate(edge_down):6.0f} MiB/s vs own client "
                    f"{rate(own_down):6.0f} ({rate(edge_down) / rate(own_down):.2f}x)",
                    flush=True,
                )
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
        for path in work.rglob("*"):
            if path.is_file():
                path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
