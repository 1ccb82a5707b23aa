"""``/api/file`` through a real edge process (its own NATS server), on a local folder and on
an S3-protocol server (moto's standalone server, on a free port) through s3fs: what a user
does with curl, every bad input, two users apart, interrupted and oversized uploads, the
store going away (503), and the edge's memory while 500 MB go up and down."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from busgate.brokers import NatsServer, free_port, wait_for_port
from busgate.contracts.config import Token
from busgate.edge.file_store import STAGING
from busgate.edge.files import user_folder
from busgate.edge.tokens import TokenService
from tests.bus.conftest import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.nats]

SECRET = secrets.token_urlsafe(48)
MIB = 1024 * 1024
BUCKET = "busgate-files"
FAKE_AWS = {  # moto accepts any credentials; these never leave the machine
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def bearer(subject: str, *roles: str) -> dict[str, str]:
    token = TokenService("main", Token(secret=SECRET)).access(subject, {"roles": list(roles)}, "s")
    return {"Authorization": f"Bearer {token}"}


ALICE, BOB = bearer("alice", "user"), bearer("bob", "user")


class Moto:
    """moto's S3 server as a subprocess on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **FAKE_AWS},
        )
        wait_for_port("127.0.0.1", self.port, 30, self.proc)  # type: ignore[arg-type]

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, **_boto_credentials())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": FAKE_AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": FAKE_AWS["AWS_DEFAULT_REGION"],
    }


def s3_service(url: str, max_size: int) -> str:
    # Fail fast when the server is away: one attempt, a short connect timeout.
    return f"""type = "file"
token = "main"
url = "s3://{BUCKET}/files"
max_size = {max_size}
options.endpoint_url = "{url}"
options.config_kwargs = {{ connect_timeout = 1, retries = {{ max_attempts = 1 }} }}
"""


@dataclass
class Edge:
    url: str
    proc: subprocess.Popen[bytes]
    folder: Path
    moto: Moto
    gone: Moto

    def rss_peak(self) -> int:
        """The edge process's peak resident memory (VmHWM), bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def s3_keys(self, prefix: str = "files/") -> list[str]:
        found = self.moto.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for item in found.get("Contents", [])]

    def s3_uploads_under_way(self) -> list[str]:
        found = self.moto.client().list_multipart_uploads(Bucket=BUCKET)
        return [item["Key"] for item in found.get("Uploads", [])]

    def local_files(self) -> list[str]:
        return sorted(
            str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if p.is_file()
        )


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    folder = tmp_path_factory.mktemp("files")
    workdir = tmp_path_factory.mktemp("edge")
    with NatsServer() as nats:
        moto, gone = Moto(), Moto()
        try:
            for server in (moto, gone):
                server.client().create_bucket(Bucket=BUCKET)
            port = free_port()
            config = workdir / "edge.toml"
            config.write_text(
                f"""
[gateway]
id = "files"
bus = "{nats.url}"
listen = "127.0.0.1:{port}"
return_ids = "always"
max_body = 65536
body_timeout = 2.0

[tokens.main]
secret = "env:FILES_TEST_SECRET"

[services.local]
type = "file"
token = "main"
url = "file://{folder}"
max_size = {600 * MIB}

[services.s3]
{s3_service(moto.url, 64 * MIB)}
[services.gone]
{s3_service(gone.url, MIB)}
[services.small]
type = "file"
token = "main"
url = "file://{folder}/small"
max_size = 1000
"""
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith(("BUSGATE__", "AWS_"))}
            env.update(FAKE_AWS, FILES_TEST_SECRET=SECRET)
            proc = subprocess.Popen(
                [sys.executable, "-m", "busgate", "edge", "--config", str(config)], env=env
            )
            try:
                wait_for_port("127.0.0.1", port, 30, proc)  # type: ignore[arg-type]
                yield Edge(f"http://127.0.0.1:{port}", proc, folder, moto, gone)  # type: ignore[arg-type]
            finally:
                proc.terminate()
                proc.wait(10)
        finally:
            moto.stop()
            gone.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


STORES = ["local", "s3"]


def form(name: str, data: bytes) -> aiohttp.FormData:
    out = aiohttp.FormData()
    out.add_field("file", data, filename=name, content_type="application/pdf")
    return out


@pytest.mark.parametrize("store", STORES)
async def test_what_the_curls_do(edge, http, store):
    base = f"{edge.url}/api/file/{store}"
    data = secrets.token_bytes(48213)
    async with http.post(base, data=form("report.pdf", data), headers=ALICE) as resp:
        assert resp.status == 201, await resp.text()
        made = await resp.json()
    assert made == {"path": "report.pdf", "size": 48213, "etag": made["etag"]}
    async with http.get(base, headers=ALICE) as resp:
        assert [f["path"] for f in (await resp.json())["files"]] == ["report.pdf"]
    async with http.get(f"{base}/report.pdf", headers=ALICE) as resp:
        assert resp.status == 200
        assert await resp.read() == data
        assert resp.headers["ETag"] == made["etag"]
    if store == "s3":  # where it is, by the store's own client
        assert edge.s3_keys(f"files/{user_folder('alice')}/") == [
            f"files/{user_folder('alice')}/report.pdf"
        ]
    else:
        assert (edge.folder / user_folder("alice") / "report.pdf").read_bytes() == data
    async with http.delete(f"{base}/report.pdf", headers=ALICE) as resp:
        assert resp.status == 204
    async with http.get(f"{base}/report.pdf", headers=ALICE) as resp:
        assert resp.status == 404


@pytest.mark.parametrize("store", STORES)
async def test_two_users_cannot_see_each_others_files(edge, http, store):
    base = f"{edge.url}/api/file/{store}"
    async with http.post(f"{base}?name=secret.txt", data=b"alice only", headers=ALICE) as resp:
        assert resp.status == 201
    for method in ("GET", "DELETE"):
        async with http.request(method, f"{base}/secret.txt", headers=BOB) as resp:
            assert resp.status == 404
    async with http.get(base, headers=BOB) as resp:
        assert (await resp.json())["files"] == []
    async with http.get(f"{base}/secret.txt", headers=ALICE) as resp:
        assert await resp.read() == b"alice only"


BAD = ["a%2Fb", "..%2F..%2Fx", "a%5Cb", "a%00b", "../x", "a/../../b", "/etc/passwd", "a%252F"]


@pytest.mark.parametrize("store", STORES)
async def test_every_bad_path_is_400(edge, http, store):
    for path in BAD:
        url = URL(f"{edge.url}/api/file/{store}/{path}", encoded=True)
        for method in ("GET", "POST", "DELETE"):
            async with http.request(method, url, data=b"x", headers=ALICE) as resp:
                assert resp.status == 400, (method, path)
                assert (await resp.json())["error"]["code"] == "bad_request"
        name_url = URL(f"{edge.url}/api/file/{store}?name={path}", encoded=True)
        async with http.post(name_url, data=b"x", headers=ALICE) as resp:
            assert resp.status in (400, 201), path
            if resp.status == 201:  # %2F in a query is a plain "/": a nested, legal name
                assert "/" in (await resp.json())["path"] and ".." not in path
    async with http.get(f"{edge.url}/api/file/nowhere", headers=ALICE) as resp:
        assert resp.status == 404
    assert not any(".." in f or f.startswith("/") for f in edge.local_files())


@pytest.mark.parametrize("store", ["small", "s3"])
async def test_over_max_size_is_413_and_nothing_is_stored(edge, http, store):
    limit = 1000 if store == "small" else 64 * MIB
    before = edge.local_files() if store == "small" else edge.s3_keys()

    async def over() -> AsyncIterator[bytes]:  # no Content-Length: cut while streaming
        block = b"x" * MIB
        for _ in range(limit // MIB + 1):
            yield block
        yield b"x" * (limit % MIB + 1)

    async with http.post(
        f"{edge.url}/api/file/{store}?name=big.bin", data=over(), headers=ALICE
    ) as resp:
        assert resp.status == 413
        assert f"limit of {limit} bytes" in (await resp.json())["error"]["message"]
    if store == "s3":
        await eventually(lambda: not edge.s3_uploads_under_way())
        assert edge.s3_keys() == before
    else:
        await eventually(lambda: edge.local_files() == before)


@pytest.mark.parametrize("store", STORES)
async def test_an_interrupted_upload_leaves_no_partial_file(edge, http, store):
    url = f"{edge.url}/api/file/{store}?name=cut.bin"
    started = asyncio.Event()
    before = edge.local_files() if store == "local" else edge.s3_keys()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(12):  # over the 5 MiB part size: S3 has begun a multipart upload
            yield secrets.token_bytes(MIB)
        started.set()
        raise ConnectionResetError("the client went away")

    with pytest.raises(aiohttp.ClientError):
        await http.post(url, data=body(), headers=ALICE)
    assert started.is_set()
    if store == "s3":
        await eventually(lambda: not edge.s3_uploads_under_way())  # aborted, not left
        assert edge.s3_keys() == before
    else:
        await eventually(lambda: edge.local_files() == before)  # the staged file too
        assert not any(STAGING in f for f in edge.local_files())


async def test_a_stalled_upload_is_cut_at_the_body_timeout_and_leaves_nothing(edge, http):
    """``gateway.body_timeout`` (2 s here) still guards uploads that max_body does not cap."""
    before = edge.local_files()
    never = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * MIB
        await never.wait()  # the client stalls mid-body

    started = time.monotonic()
    with pytest.raises(aiohttp.ClientError):
        await http.post(f"{edge.url}/api/file/local?name=slow.bin", data=body(), headers=ALICE)
    assert time.monotonic() - started < 10
    await eventually(lambda: edge.local_files() == before)


async def test_ranges_etags_and_304_on_s3(edge, http):
    base = f"{edge.url}/api/file/s3"
    data = secrets.token_bytes(7 * MIB)  # two parts: a multipart upload, S3's own ETag
    async with http.post(f"{base}?name=r.bin", data=data, headers=BOB) as resp:
        etag = (await resp.json())["etag"]
    head = edge.moto.client().head_object(Bucket=BUCKET, Key=f"files/{user_folder('bob')}/r.bin")
    assert etag == head["ETag"]
    async with http.get(f"{base}/r.bin", headers={**BOB, "Range": "bytes=6000000-6000009"}) as r:
        assert r.status == 206
        assert await r.read() == data[6000000:6000010]
    async with http.get(f"{base}/r.bin", headers={**BOB, "If-None-Match": etag}) as resp:
        assert resp.status == 304
    async with http.get(f"{base}/r.bin", headers={**BOB, "Range": f"bytes={len(data)}-"}) as r:
        assert r.status == 416


async def test_a_stopped_s3_server_is_503(edge, http):
    base = f"{edge.url}/api/file/gone"
    async with http.post(f"{base}?name=a.txt", data=b"there", headers=ALICE) as resp:
        assert resp.status == 201
    edge.gone.stop()
    for method, url in (("GET", base), ("GET", f"{base}/a.txt"), ("POST", f"{base}?name=b")):
        started = time.monotonic()
        async with http.request(method, url, data=b"x", headers=ALICE) as resp:
            assert resp.status == 503, (method, url, await resp.text())
            assert (await resp.json())["error"]["code"] == "store_unavailable"
        assert time.monotonic() - started < 15


async def test_500_mb_up_and_down_leave_the_edges_memory_flat(edge, http):
    """The edge's peak RSS grows under 50 MB while 500 MB go up and come back down, with a
    client that stops reading for a while in between."""
    base = f"{edge.url}/api/file/local"
    async with http.post(f"{base}?name=warm.bin", data=b"w" * (8 * MIB), headers=ALICE) as r:
        assert r.status == 201  # thread pool and buffers warmed up first
    async with http.get(f"{base}/warm.bin", headers=ALICE) as resp:
        await resp.read()
    peak = edge.rss_peak()
    block = secrets.token_bytes(MIB)
    size = 500 * MIB
    sent = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for n in range(size // MIB):
            chunk = n.to_bytes(8, "big") + block[8:]
            sent.update(chunk)
            yield chunk

    started = time.monotonic()
    async with http.post(f"{base}?name=big.bin", data=body(), headers=ALICE) as resp:
        assert resp.status == 201, await resp.text()
        assert (await resp.json())["size"] == size
    up = time.monotonic() - started
    received = hashlib.sha256()
    started = time.monotonic()
    async with http.get(f"{base}/big.bin", headers=ALICE) as resp:
        assert resp.status == 200
        received.update(await resp.content.readexactly(MIB))
        await asyncio.sleep(1.0)  # a client that stops reading: the edge must not buffer
        async for chunk in resp.content.iter_chunked(MIB):
            received.update(chunk)
    down = time.monotonic() - started
    assert received.hexdigest() == sent.hexdigest()
    growth = edge.rss_peak() - peak
    rates = f"up {500 / up:.0f} MiB/s, down {500 / down:.0f} MiB/s"
    print(f"500 MiB: {rates}, edge peak RSS +{growth / MIB:.1f} MiB")
    assert growth < 50 * MIB
    async with http.delete(f"{base}/big.bin", headers=ALICE) as resp:
        assert resp.status == 204
