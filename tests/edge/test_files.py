"""``/api/file`` (edge.files) in-process: an edge on a memory bus, stores on ``memory://``
and on a local folder. The S3 store, the memory bound and a real edge process are in
tests/e2e/test_files.py."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from yarl import URL

from busgate.contracts.config import Config, ConfigError, Token, parse
from busgate.edge.file_store import STAGING, Store
from busgate.edge.files import user_folder
from busgate.edge.tokens import TokenService
from tests.bus.conftest import eventually

SECRET = secrets.token_urlsafe(48)
MIB = 1024 * 1024


def config(files: dict[str, Any], **gateway: Any) -> Config:
    return parse(
        {
            "gateway": {"id": "t", "return_ids": "always", **gateway},
            "systems": {"demo": {"type": "rpc", "base_url": "http://127.0.0.1:9"}},
            "channels": {"demo": {"system": "demo"}},
            "tokens": {"main": {"secret": SECRET}},
            "services": {
                name: {"type": "file", "token": "main", **service}
                for name, service in files.items()
            },
        }
    )


def bearer(subject: str, *roles: str) -> dict[str, str]:
    token = TokenService("main", Token(secret=SECRET)).access(subject, {"roles": list(roles)}, "s")
    return {"Authorization": f"Bearer {token}"}


def memory_url() -> str:
    return f"memory://files-{uuid.uuid4().hex}"


ALICE, BOB = bearer("alice", "user"), bearer("bob", "user")


@pytest.fixture
async def files(edge):
    """A client of an edge with the file services ``up`` (memory://, per user), ``shared``
    (memory://, one space, role ``staff``) and ``open`` (anonymous allowed)."""
    cfg = config(
        {
            "up": {"url": memory_url(), "max_size": 1000},
            "shared": {"url": memory_url(), "scope": "shared", "roles": ["staff"]},
            "open": {"url": memory_url(), "anonymous": True},
        }
    )
    client, _ = await edge(cfg)
    return client


def form(name: str, data: bytes) -> aiohttp.FormData:
    out = aiohttp.FormData()
    out.add_field("file", data, filename=name, content_type="application/pdf")
    return out


async def test_upload_list_download_delete_round_trip(files):
    resp = await files.post(
        "/api/file/up", data=form("report.pdf", b"%PDF-1.7 hello"), headers=ALICE
    )
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    assert made["path"] == "report.pdf" and made["size"] == 14
    assert made["etag"] == resp.headers["ETag"]
    assert resp.headers["Location"] == "/api/file/up/report.pdf"

    resp = await files.get("/api/file/up", headers=ALICE)
    listed = (await resp.json())["files"]
    assert [(f["path"], f["size"], f["etag"]) for f in listed] == [("report.pdf", 14, made["etag"])]

    resp = await files.get("/api/file/up/report.pdf", headers=ALICE)
    assert resp.status == 200
    assert await resp.read() == b"%PDF-1.7 hello"
    assert resp.headers["Content-Type"] == "application/pdf"
    assert resp.headers["ETag"] == made["etag"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Content-Disposition"].startswith('attachment; filename="report.pdf"')

    resp = await files.delete("/api/file/up/report.pdf", headers=ALICE)
    assert resp.status == 204
    assert (await files.get("/api/file/up/report.pdf", headers=ALICE)).status == 404
    assert (await (await files.get("/api/file/up", headers=ALICE)).json())["files"] == []
    assert (await files.delete("/api/file/up/report.pdf", headers=ALICE)).status == 404


async def test_a_raw_body_is_named_by_the_query_or_the_path(files):
    resp = await files.post("/api/file/up?name=notes/a%2Fb.txt", data=b"raw", headers=ALICE)
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["path"] == "notes/a/b.txt"  # %2F in a query is just "/"
    resp = await files.post("/api/file/up/notes/c.txt", data=b"at a path", headers=ALICE)
    assert resp.status == 201
    got = await files.get("/api/file/up/notes/c.txt", headers=ALICE)
    assert await got.read() == b"at a path"
    assert got.headers["Content-Type"] == "text/plain"
    resp = await files.post("/api/file/up", data=b"nameless", headers=ALICE)
    assert resp.status == 400
    assert "name the file" in (await resp.json())["error"]["message"]


async def test_two_users_never_see_each_others_files(files):
    await files.post("/api/file/up?name=mine.txt", data=b"alice's", headers=ALICE)
    assert (await files.get("/api/file/up/mine.txt", headers=BOB)).status == 404
    assert (await files.delete("/api/file/up/mine.txt", headers=BOB)).status == 404
    assert (await (await files.get("/api/file/up", headers=BOB)).json())["files"] == []
    resp = await files.post("/api/file/up?name=mine.txt", data=b"bob's", headers=BOB)
    assert resp.status == 201
    assert await (await files.get("/api/file/up/mine.txt", headers=ALICE)).read() == b"alice's"
    assert await (await files.get("/api/file/up/mine.txt", headers=BOB)).read() == b"bob's"


def test_subjects_map_to_distinct_safe_folders():
    subjects = ["a/b", "a%2Fb", "a_2Fb", "..", ".", "anonymous", "x" * 400, "x" * 401, "é"]
    folders = [user_folder(s) for s in subjects]
    assert len(set(folders)) == len(subjects)
    assert "anonymous" not in folders
    for folder in folders:
        assert "/" not in folder and folder not in (".", "..") and len(folder) <= 152


async def test_no_token_is_401_unless_the_service_allows_anonymous_use(files):
    resp = await files.get("/api/file/up")
    assert resp.status == 401
    assert "WWW-Authenticate" in resp.headers
    resp = await files.post("/api/file/open?name=a.txt", data=b"anon")
    assert resp.status == 201
    assert await (await files.get("/api/file/open/a.txt")).read() == b"anon"
    # a caller with a token has a folder of their own, apart from the anonymous one
    assert (await files.get("/api/file/open/a.txt", headers=ALICE)).status == 404


async def test_a_shared_service_is_one_space_for_callers_with_the_role(files):
    staff_a, staff_b = bearer("a", "staff"), bearer("b", "staff")
    resp = await files.post("/api/file/shared?name=plan.txt", data=b"ours", headers=staff_a)
    assert resp.status == 201
    assert await (await files.get("/api/file/shared/plan.txt", headers=staff_b)).read() == b"ours"
    listed = (await (await files.get("/api/file/shared", headers=staff_b)).json())["files"]
    assert [f["path"] for f in listed] == ["plan.txt"]
    assert (await files.get("/api/file/shared/plan.txt", headers=ALICE)).status == 403


async def test_unknown_service_is_404(files):
    resp = await files.get("/api/file/nope", headers=ALICE)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_the_file_controller_switched_off_removes_the_endpoints(edge):
    cfg = config({"up": {"url": memory_url()}}, controllers={"file": False})
    client, _ = await edge(cfg)
    assert (await client.get("/api/file/up", headers=ALICE)).status == 404
    assert (await client.post("/api/file/up?name=a", data=b"x", headers=ALICE)).status == 404


BAD_PATHS = [
    "a%2Fb",  # an encoded separator
    "..%2Fup%2Fx",
    "a%5Cb",  # an encoded backslash
    "a%00b",  # NUL
    "a/../b",
    "../x",
    "%2e%2e/x",
    "/etc/passwd",  # absolute: an empty first segment
    "a%252Fb",  # double encoding
    "a/",
    f"{STAGING}x",
    "x" * 201,
]


@pytest.mark.parametrize("path", BAD_PATHS)
async def test_bad_paths_are_400_for_every_method(files, path):
    base = str(files.make_url("/")).rstrip("/")
    url = URL(f"{base}/api/file/up/{path}", encoded=True)
    for method in ("GET", "POST", "DELETE"):
        async with files.session.request(method, url, data=b"x", headers=ALICE) as resp:
            assert resp.status == 400, (method, path, await resp.text())
            assert (await resp.json())["error"]["code"] == "bad_request"


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a%00b", "a%5Cb", "a/./b", "a//b"])
async def test_bad_names_are_400_in_the_query_and_the_form(files, name):
    resp = await files.post(
        URL(f"/api/file/up?name={name}", encoded=True), data=b"x", headers=ALICE
    )
    assert resp.status == 400, await resp.text()
    if "%00" not in name:  # aiohttp's client refuses to send a NUL in a header
        resp = await files.post("/api/file/up", data=form(unquote(name), b"x"), headers=ALICE)
        assert resp.status == 400, await resp.text()
    assert (await (await files.get("/api/file/up", headers=ALICE)).json())["files"] == []


@pytest.mark.parametrize(
    "body",
    [
        b"-1045--B--\r\n",  # no opening boundary
        b'--B\r\nContent-Disposition: form-data; name="\xc2\xa1"\r\n\r\n-2.2e-309\r\n--B--\r\n',
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc',
        b"--B\r\n\r\n\r\n--B--\r\n",  # a part without headers
        # schemathesis' two (a header line with a control byte; a body before any part)
        b'--B\r\nContent-Disposition: form-data; name="\x01\xf1\xb3\xbd\x837"\r\n'
        b"\r\n{}\r\n--B--\r\n",
        b"--B\r\n-1045--B--\r\n",
    ],
    ids=["no-boundary", "no-file-part", "cut-off", "no-headers", "control-byte", "no-blank-line"],
)
async def test_a_malformed_multipart_form_is_400_and_stores_nothing(files, body: bytes):
    """Found by schemathesis: a form aiohttp's reader cannot parse answered 500."""
    headers = {**ALICE, "Content-Type": "multipart/form-data; boundary=B"}
    for url in ("/api/file/up", "/api/file/up/Q"):
        resp = await files.post(url, data=body, headers=headers)
        assert resp.status == 400, (url, await resp.text())
        assert (await resp.json())["error"]["code"] == "bad_request"
    assert (await (await files.get("/api/file/up", headers=ALICE)).json())["files"] == []


async def test_over_max_size_is_413_and_nothing_is_stored(files):
    resp = await files.post("/api/file/up?name=big", data=b"x" * 1001, headers=ALICE)
    assert resp.status == 413
    assert "limit of 1000 bytes" in (await resp.json())["error"]["message"]

    async def chunked():  # no Content-Length: refused while streaming
        for _ in range(3):
            yield b"x" * 400

    resp = await files.post("/api/file/up?name=big", data=chunked(), headers=ALICE)
    assert resp.status == 413
    resp = await files.post("/api/file/up", data=form("big.pdf", b"x" * 1001), headers=ALICE)
    assert resp.status == 413
    assert (await (await files.get("/api/file/up", headers=ALICE)).json())["files"] == []
    resp = await files.post("/api/file/up?name=fits", data=b"x" * 1000, headers=ALICE)
    assert resp.status == 201


async def test_gateway_max_body_does_not_cap_file_uploads(edge):
    cfg = config({"up": {"url": memory_url(), "max_size": 4 * MIB}}, max_body=1024)
    client, _ = await edge(cfg)
    data = secrets.token_bytes(3 * MIB)
    resp = await client.post("/api/file/up", data=form("big.bin", data), headers=ALICE)
    assert resp.status == 201, await resp.text()
    assert await (await client.get("/api/file/up/big.bin", headers=ALICE)).read() == data
    resp = await client.post("/api/request/demo/x", data=b"x" * 2048)  # still capped there
    assert resp.status == 413


async def test_ranges_etags_and_conditional_downloads(files):
    data = bytes(range(256)) * 4
    made = await (
        await files.post("/api/file/up?name=d.bin", data=data[:1000], headers=ALICE)
    ).json()
    url, etag = "/api/file/up/d.bin", made["etag"]

    resp = await files.get(url, headers={**ALICE, "Range": "bytes=10-19"})
    assert resp.status == 206
    assert await resp.read() == data[10:20]
    assert resp.headers["Content-Range"] == "bytes 10-19/1000"
    resp = await files.get(url, headers={**ALICE, "Range": "bytes=-5"})
    assert (resp.status, await resp.read()) == (206, data[995:1000])
    resp = await files.get(url, headers={**ALICE, "Range": "bytes=990-"})
    assert (resp.status, await resp.read()) == (206, data[990:1000])
    resp = await files.get(url, headers={**ALICE, "Range": "bytes=990-5000"})
    assert resp.headers["Content-Range"] == "bytes 990-999/1000"
    for bad in ("bytes=1000-", "bytes=5-2", "bytes=-0"):
        resp = await files.get(url, headers={**ALICE, "Range": bad})
        assert resp.status == 416, bad
        assert resp.headers["Content-Range"] == "bytes */1000"
    resp = await files.get(url, headers={**ALICE, "Range": "bytes=0-1,5-6"})  # several: all
    assert (resp.status, len(await resp.read())) == (200, 1000)

    resp = await files.get(url, headers={**ALICE, "If-None-Match": etag})
    assert resp.status == 304
    assert await resp.read() == b""
    resp = await files.get(url, headers={**ALICE, "If-None-Match": '"other"'})
    assert resp.status == 200
    resp = await files.get(url, headers={**ALICE, "Range": "bytes=0-0", "If-Range": '"old"'})
    assert (resp.status, len(await resp.read())) == (200, 1000)

    await files.post("/api/file/up?name=d.bin", data=b"replaced", headers=ALICE)
    resp = await files.get(url, headers={**ALICE, "If-None-Match": etag})
    assert resp.status == 200 and await resp.read() == b"replaced"
    assert resp.headers["ETag"] != etag


async def test_odd_names_download_with_a_safe_disposition(files):
    name = 'r\u00e9sum\u00e9 "v2".txt'
    resp = await files.post("/api/file/up", params={"name": name}, data=b"cv", headers=ALICE)
    assert resp.status == 201, await resp.text()
    resp = await files.get(f"/api/file/up/{name}", headers=ALICE)
    assert resp.status == 200
    disposition = resp.headers["Content-Disposition"]
    assert disposition.isascii()
    assert 'filename="r_sum_ _v2_.txt"' in disposition
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9%20%22v2%22.txt" in disposition


async def test_a_store_that_fails_is_503(edge, monkeypatch):
    client, _ = await edge(config({"up": {"url": memory_url()}}))

    def broken(*_: Any) -> Any:
        raise ConnectionError("store down")

    monkeypatch.setattr(Store, "_list", broken)
    monkeypatch.setattr(Store, "_info", broken)
    resp = await client.get("/api/file/up", headers=ALICE)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "store_unavailable"
    assert resp.headers["Retry-After"]
    assert (await client.get("/api/file/up/a.txt", headers=ALICE)).status == 503


def test_file_service_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"services\.f.*url"):
        config({"f": {"url": ""}})
    with pytest.raises(ConfigError, match=r"services\.f.*max_size"):
        config({"f": {"url": "memory://x", "max_size": 0}})
    with pytest.raises(ConfigError, match=r"services\.f.*token"):
        config({"f": {"url": "memory://x", "token": None}})
    with pytest.raises(ConfigError, match=r"services\.f.*topics"):
        config({"f": {"url": "memory://x", "topics": ["a.*"]}})
    with pytest.raises(ConfigError, match=r"services\.f.*scope"):
        config({"f": {"url": "memory://x", "scope": "team"}})


async def test_an_unknown_store_protocol_fails_at_start(edge):
    with pytest.raises(ConfigError, match=r"services\.f\.url"):
        await edge(config({"f": {"url": "nosuchprotocol://x"}}))


async def test_an_interrupted_upload_leaves_nothing_in_a_local_folder(edge, tmp_path: Path):
    client, _ = await edge(config({"up": {"url": f"file://{tmp_path}", "max_size": 64 * MIB}}))
    sent = asyncio.Event()

    def staged() -> bool:
        return any(tmp_path.rglob(".busgate-upload-*"))

    async def body():
        yield b"x" * (2 * MIB)
        sent.set()
        await eventually(staged)  # the edge is writing the staged file
        raise ConnectionResetError("client gave up")

    with pytest.raises(aiohttp.ClientError):
        await client.post("/api/file/up?name=part.bin", data=body(), headers=ALICE)
    assert sent.is_set()
    folder = tmp_path / user_folder("alice")

    def nothing_left() -> bool:  # not even the staged file
        return not any(p.is_file() for p in tmp_path.rglob("*"))

    await eventually(nothing_left)
    assert not (folder / "part.bin").exists()
    resp = await client.post("/api/file/up?name=part.bin", data=b"whole", headers=ALICE)
    assert resp.status == 201
    assert (folder / "part.bin").read_bytes() == b"whole"
    assert [p.name for p in folder.iterdir()] == ["part.bin"]


def test_the_sweep_removes_only_staged_uploads_untouched_for_long(tmp_path: Path):
    """What a killed edge left (its staged file's last write long ago) goes; an upload
    under way, a user's file and another store's memory are left alone."""
    folder = tmp_path / "u-alice"
    folder.mkdir()
    abandoned = folder / f"{STAGING}dead-report.pdf"
    live = folder / f"{STAGING}live-report.pdf"
    kept = folder / "old.pdf"
    for path in (abandoned, live, kept):
        path.write_bytes(b"x")
    long_ago = time.time() - 2 * 86400
    os.utime(abandoned, (long_ago, long_ago))
    os.utime(kept, (long_ago, long_ago))
    store = Store(f"file://{tmp_path}", {})
    try:
        assert store.sweep() == 1
        assert sorted(p.name for p in folder.iterdir()) == sorted([live.name, kept.name])
        assert store.sweep(older_than=0) == 1  # a zero age takes the live one too
    finally:
        store.close()
    assert Store(memory_url(), {}).sweep(older_than=0) == 0


async def test_an_edge_sweeps_abandoned_uploads_when_it_starts(edge, tmp_path: Path):
    folder = tmp_path / user_folder("alice")
    folder.mkdir()
    abandoned = folder / f"{STAGING}dead-part.bin"
    abandoned.write_bytes(b"x" * 100)
    long_ago = 1_000_000_000.0  # 2001
    os.utime(abandoned, (long_ago, long_ago))
    client, _ = await edge(config({"up": {"url": f"file://{tmp_path}"}}))
    await eventually(lambda: not abandoned.exists())
    resp = await client.get("/api/file/up", headers=ALICE)
    assert resp.status == 200 and (await resp.json())["files"] == []


async def test_head_answers_the_headers_of_a_download_without_the_body(files):
    await files.post("/api/file/up?name=h.txt", data=b"0123456789", headers=ALICE)
    resp = await files.head("/api/file/up/h.txt", headers=ALICE)
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "10"
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert await resp.read() == b""
    assert (await files.head("/api/file/up/nope.txt", headers=ALICE)).status == 404


async def test_a_caller_cancelled_while_the_upload_is_staged_leaves_nothing(tmp_path: Path):
    """A client that leaves while the pool is still creating the staged file: the handler
    never gets the upload, so the store discards it once made."""
    import threading

    from busgate.edge import file_store

    store = file_store.Store(f"file://{tmp_path}", {})
    entered, release, made = threading.Event(), threading.Event(), threading.Event()
    make = file_store.Upload.__init__

    def slow_init(self, *args) -> None:
        entered.set()
        release.wait(10)
        make(self, *args)
        made.set()

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(file_store.Upload, "__init__", slow_init)
            task = asyncio.ensure_future(store.begin("u-alice", "late.bin"))
            await asyncio.to_thread(entered.wait, 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            release.set()
            assert await asyncio.to_thread(made.wait, 10)  # the staged file exists now
            await eventually(lambda: not any(p.is_file() for p in tmp_path.rglob("*")))
    finally:
        release.set()
        store.close()
