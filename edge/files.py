"""``/api/file/{service}``: list, upload, download and delete files of a ``type = "file"``
service (``[services.NAME]``), streamed both ways through the store (``edge.file_store``).

- ``GET /api/file/S`` lists the caller's files; ``POST /api/file/S`` uploads one (multipart
  form: its first file part, named by its filename or ``?name=``; any other body: named by
  ``?name=``); ``POST /api/file/S/PATH`` uploads to ``PATH``; ``GET`` downloads (``Range``,
  ``If-None-Match``, ``If-Range``), ``DELETE`` deletes.
- Files are the caller's: under their token's subject (``scope = "user"``), or
  ``anonymous`` when the service lets callers without a token in; another caller's file is
  404, like a missing one. ``scope = "shared"``: one space for all callers, roles still
  checked.
- Streamed: an upload is written as it arrives, in chunks, and appears only when complete
  (an interrupted or oversized one leaves nothing); a download is read as it is sent, the
  socket's drain pacing the store. ``gateway.max_body`` does not apply here (these handlers
  never read a whole body); the service's ``max_size`` does, while streaming.
- Names follow the path rule of ``contracts.paths`` (no ``..``, NUL, backslash, leading
  ``/``, double encoding), and an encoded separator (``%2F``, ``%5C``) is refused too: it
  would name another path once decoded.
- Downloads are attachments with ``nosniff``: an uploaded HTML page never runs on the
  gateway's origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import mimetypes
import posixpath
import re
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from busgate.contracts import errors
from busgate.contracts.codec import json_encode
from busgate.contracts.config import Config, ConfigError, Service
from busgate.contracts.paths import refusal
from busgate.edge.caller import identify, require, www_authenticate
from busgate.edge.file_store import STAGING, Store, etag_of, modified_of
from busgate.edge.middleware.errors import error_answer
from busgate.edge.responses import JSON

log = logging.getLogger("busgate.edge.files")

LIST = "/api/file/{service}"
ONE = r"/api/file/{service}/{path:[\s\S]+}"

CHUNK = 1024 * 1024
"""Bytes handed to the store per write and read: few thread hops per file, bounded memory."""
SWEEP_EVERY = 3600.0
"""Seconds between two sweeps of abandoned staged uploads (``Store.sweep``)."""

ANONYMOUS = "anonymous"
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c)", re.IGNORECASE)
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_MAX_SEGMENT = 200  # bytes; local file systems allow 255, and staging adds a prefix


def user_folder(subject: str) -> str:
    """A subject's folder: strictly quoted (readable, and no two subjects share one), or
    hashed when long. The prefixes keep both apart from each other and from ``anonymous``."""
    quoted = quote(subject, safe="")
    if len(quoted) <= 150:
        return f"u-{quoted}"
    return "h-" + hashlib.sha256(subject.encode()).hexdigest()


MULTIPART_ERRORS = (ValueError, AssertionError, LookupError, HttpProcessingError)
"""What aiohttp's multipart reader raises on a form that does not parse (a missing or wrong
boundary, a part without headers, a bad ``Content-Disposition``): the client's fault, a 400."""


def bad_form(exc: BaseException) -> errors.BadRequest:
    return errors.BadRequest(f"the multipart form does not parse ({type(exc).__name__})")


async def read_part(part: BodyPartReader, size: int) -> bytes:
    """A chunk of the file part; a form that breaks off or turns malformed midway is a 400."""
    try:
        chunk = await part.read_chunk(size)
    except MULTIPART_ERRORS as exc:
        raise bad_form(exc) from None
    if not chunk and not part.at_eof():  # the body ended before the part's boundary
        raise errors.BadRequest("the multipart form ends inside the file part (no boundary)")
    return chunk


def checked_name(name: str, raw: str = "") -> str:
    """``name`` as a file path under the caller's folder, or 400."""
    if not name:
        raise errors.BadRequest("name the file: POST …?name=NAME, or a multipart filename")
    if _ENCODED_SEPARATOR.search(raw):
        raise errors.BadRequest("encoded separators (%2F, %5C) are not allowed in file names")
    why = refusal(name)
    if why is not None:
        raise errors.BadRequest(f"bad file name: {why}")
    if name.endswith("/"):
        raise errors.BadRequest("bad file name: it may not end with '/'")
    for segment in name.split("/"):
        if len(segment.encode()) > _MAX_SEGMENT:
            raise errors.BadRequest(f"bad file name: a segment is over {_MAX_SEGMENT} bytes")
        if segment.startswith(STAGING):
            raise errors.BadRequest(f"bad file name: {STAGING!r} is reserved")
    return name


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) of one ``bytes=`` range; None to send the whole file (several ranges,
    another unit); 416 when it lies outside the file."""
    found = _RANGE.fullmatch(header.strip())
    if found is None:
        return None
    first, last = found.group(1), found.group(2)
    if not first and not last:
        return None
    if not first:  # the last N bytes
        if int(last) == 0:
            raise errors.RangeNotSatisfiable(f"the range lies outside the file ({size} bytes)")
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise errors.RangeNotSatisfiable(f"the range lies outside the file ({size} bytes)")
    return start, end


def disposition(name: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact one (RFC 6266)."""
    base = posixpath.basename(name)
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in base
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(base, safe='')}"


def too_large(limit: int) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(f"the file exceeds this service's limit of {limit} bytes")


class FileApi:
    def __init__(self, config: Config) -> None:
        self.services = config.file_services
        self.stores: dict[str, Store] = {}
        for name, service in self.services.items():
            try:
                self.stores[name] = Store(service.url, dict(service.options))
            except (ImportError, ValueError, TypeError, OSError) as exc:
                raise ConfigError(f"services.{name}.url: {exc}") from None

    async def ctx(self, app: web.Application) -> Any:
        sweeper = asyncio.create_task(self._sweep(), name="busgate-files-sweep")
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        for store in self.stores.values():
            store.close()

    async def _sweep(self) -> None:
        """At start and every :data:`SWEEP_EVERY` seconds: the staged uploads that edges
        killed mid-upload left in local folders (``Store.sweep``)."""
        while True:
            for name, store in self.stores.items():
                try:
                    removed = await store.run(store.sweep)
                except errors.BusgateError as exc:
                    log.warning("file service %s: staged uploads not swept: %s", name, exc)
                else:
                    if removed:
                        log.info("file service %s: %d abandoned uploads removed", name, removed)
            await asyncio.sleep(SWEEP_EVERY)

    async def caller(self, request: web.Request) -> tuple[Service, Store, str]:
        """The service, its store and the caller's folder ('' = the shared space)."""
        name = request.match_info["service"]
        service = self.services.get(name)
        if service is None:
            raise errors.NotFound(f"unknown file service {name!r}")
        identity = await identify(request, service.token)
        if identity is None:
            if not service.anonymous:
                raise errors.Unauthorized("this path needs a token")
            folder = ANONYMOUS
        else:
            roles = frozenset(r for r in service.roles if r != "*") or None
            require(identity, roles)
            folder = user_folder(identity.subject)
        return service, self.stores[name], "" if service.scope == "shared" else folder

    async def list(self, request: web.Request) -> web.StreamResponse:
        _, store, folder = await self.caller(request)
        files = await store.list(folder)
        body = [
            {"path": f.path, "size": f.size, "etag": f.etag, "modified": f.modified} for f in files
        ]
        return web.Response(body=json_encode({"files": body}), content_type=JSON)

    async def upload(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._upload(request)
        except errors.PayloadTooLarge as exc:
            # The rest of the body stays unread: aiohttp lingers a moment (so the client can
            # read the 413), then closes, instead of reading it all to keep the connection.
            answer = error_answer(request, exc)
            assert answer is not None
            answer.force_close()
            return answer

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        service, store, folder = await self.caller(request)
        limit = service.max_size
        # In the path an encoded separator is refused; in ?name= "%2F" is how "/" is sent.
        raw = request.raw_path.partition("?")[0] if "path" in request.match_info else ""
        given = request.match_info.get("path") or request.query.get("name", "")
        read: Callable[[int], Awaitable[bytes]]
        if request.content_type.startswith("multipart/"):
            if request.content_length is not None and request.content_length > limit + CHUNK:
                raise too_large(limit)
            part = await self.file_part(request)
            name = checked_name(given or part.filename or "", raw)
            read = functools.partial(read_part, part)
        else:
            name = checked_name(given, raw)
            if request.content_length is not None and request.content_length > limit:
                raise too_large(limit)
            read = request.content.read

        upload = await store.begin(folder, name)
        size = 0
        try:
            pending = bytearray()
            while chunk := await read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                pending += chunk
                if len(pending) >= CHUNK:
                    await store.run(upload.write, pending)
                    pending = bytearray()
            if pending:
                await store.run(upload.write, pending)
            await store.run(upload.commit)
        except BaseException:
            # Also on cancellation (the client went away): the pool runs it regardless.
            with contextlib.suppress(RuntimeError):  # the pool is shut down: edge stopping
                store.pool.submit(upload.discard)
            raise
        info = await store.info(folder, name)
        etag = etag_of(info)
        location = f"/api/file/{request.match_info['service']}/{quote(name)}"
        body = json_encode({"path": name, "size": size, "etag": etag})
        headers = {"ETag": etag, "Location": location}
        return web.Response(status=201, body=body, content_type=JSON, headers=headers)

    @staticmethod
    async def file_part(request: web.Request) -> BodyPartReader:
        try:
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    raise errors.BadRequest("the multipart form has no file part")
                if isinstance(part, BodyPartReader) and (part.filename or part.name == "file"):
                    return part
                await part.release()
        except MULTIPART_ERRORS as exc:
            raise bad_form(exc) from None

    async def download(self, request: web.Request) -> web.StreamResponse:
        _, store, folder = await self.caller(request)
        raw = request.raw_path.partition("?")[0]
        name = checked_name(request.match_info["path"], raw)
        info = await store.info(folder, name)
        size, etag = int(info.get("size") or 0), etag_of(info)
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Content-Type": mimetypes.guess_type(name)[0] or "application/octet-stream",
            "Content-Disposition": disposition(name),
            "X-Content-Type-Options": "nosniff",
        }
        modified = modified_of(info)
        if modified is not None:
            headers["Last-Modified"] = formatdate(modified, usegmt=True)
        wanted = request.headers.get("If-None-Match")
        if wanted is not None and (
            wanted.strip() == "*"
            or etag in (t.strip().removeprefix("W/") for t in wanted.split(","))
        ):
            return web.Response(status=304, headers={"ETag": etag})
        span = None
        asked = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if asked is not None and (if_range is None or if_range.strip() == etag):
            try:
                span = parse_range(asked, size)
            except errors.RangeNotSatisfiable as exc:
                answer = web.Response(
                    status=416,
                    body=json_encode({"error": {"code": exc.code, "message": exc.message}}),
                    content_type=JSON,
                )
                answer.headers["Content-Range"] = f"bytes */{size}"
                return answer
        first, last = span if span is not None else (0, size - 1)
        response = web.StreamResponse(status=206 if span is not None else 200, headers=headers)
        if span is not None:
            response.headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        response.content_length = last - first + 1
        if request.method == "HEAD" or size == 0:
            await response.prepare(request)
            return response
        file = await store.open_read(store.full(folder, name))
        try:
            if first:
                await store.run(file.seek, first)
            await response.prepare(request)
            left = last - first + 1
            while left > 0:
                data = await store.run(file.read, min(CHUNK, left))
                if not data:
                    raise errors.NotFound("the file shrank while it was sent")
                left -= len(data)
                await response.write(data)  # waits while the client is slow to read
        except errors.BusgateError as exc:
            if not response.prepared:
                raise
            log.warning("download of %s broken off: %s", name, exc.message)
            response.force_close()
            return response
        finally:
            with contextlib.suppress(RuntimeError):  # the pool is shut down: edge stopping
                store.pool.submit(file.close)
        await response.write_eof()
        return response

    async def delete(self, request: web.Request) -> web.StreamResponse:
        _, store, folder = await self.caller(request)
        raw = request.raw_path.partition("?")[0]
        name = checked_name(request.match_info["path"], raw)
        await store.delete(folder, name)
        return web.Response(status=204)


def install(app: web.Application, config: Config) -> None:
    if not config.file_services:
        return
    api = FileApi(config)
    app.cleanup_ctx.append(api.ctx)
    app.router.add_get(LIST, www_authenticate(api.list))
    app.router.add_post(LIST, www_authenticate(api.upload))
    app.router.add_get(ONE, www_authenticate(api.download))
    app.router.add_post(ONE, www_authenticate(api.upload))
    app.router.add_delete(ONE, www_authenticate(api.delete))
