"""A file service's store: one fsspec file system, reached from the edge's event loop.

Every store call runs in a thread of the store's own pool, for every protocol alike: fsspec
gives writable file objects only through its synchronous API (s3fs's ``open_async`` reads
only), and a synchronous call on an async file system (s3fs) hands itself to fsspec's own
I/O thread, so the event loop never waits on a store. A pool of its own, so that slow
stores never starve the loop's default executor (6 threads on 2 cores).

Uploads are staged so that only a complete file ever appears under its name:
- local folders and ``memory://``: written to a hidden sibling (``.busgate-upload-…``,
  never listed nor addressable) and renamed over the name at the end (atomic, same
  folder). fsspec's own local transactions stage in the system temp folder (a cross-device
  copy at commit), and ``memory://`` ignores ``autocommit``.
- every other store: fsspec's ``autocommit=False`` (its buffered files: S3, GCS, Azure…): an
  S3 multipart upload is completed only at ``commit`` and aborted by ``discard``.

Store failures become ``StoreUnavailable`` (503), except a missing file (404).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from busgate.contracts import errors

log = logging.getLogger("busgate.edge.files")

T = TypeVar("T")

STAGING = ".busgate-upload-"
"""Names of uploads under way in local folders; refused as user names, never listed."""

STALE_UPLOAD = 24 * 3600.0
"""Seconds after its last write when a staged upload in a local folder is taken for one
whose edge died mid-upload (a live one is written at least every ``gateway.body_timeout``
or per 1 MiB received) and removed by :meth:`Store.sweep`."""

BLOCK = 5 * 1024 * 1024
"""fsspec's write and read-ahead block: S3's smallest multipart part. s3fs's default (50 MiB)
would make each upload or download hold 50 MiB in the edge."""

READ_BLOCK = 16 * 1024 * 1024
"""A download reads the store in ranged reads of this size (one ranged GET each on S3): with
5 MiB ones a 200 MiB download from moto's S3 ran at 27 MiB/s, with 20 MiB ones at 73
(s3fs's own ``get`` at 75-109). Held once per download in flight; local files ignore it."""


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    """Relative to the caller's folder."""
    size: int
    etag: str
    modified: float | None


def etag_of(info: dict[str, Any]) -> str:
    """The store's own tag (S3's ETag, an md5) where it has one, else a hash of size and
    modification time: changes whenever the content is replaced."""
    for key in ("ETag", "etag", "md5"):
        value = info.get(key)
        if value:
            return '"' + str(value).strip('"') + '"'
    stamp = modified_of(info)
    digest = hashlib.sha256(f"{info.get('size')}:{stamp}".encode()).hexdigest()[:32]
    return f'"{digest}"'


def modified_of(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
    return None


def _unavailable(exc: Exception) -> errors.BusgateError:
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return errors.NotFound("no such file")
    if isinstance(exc, IsADirectoryError | FileExistsError):
        return errors.FileConflict("a file and a folder of the same name")
    log.warning("file store failed: %s: %s", type(exc).__name__, exc)
    return errors.StoreUnavailable("the file store is unavailable")


class Upload:
    """One upload being written; ``commit`` makes it appear, ``discard`` leaves nothing."""

    def __init__(self, store: Store, path: str) -> None:
        self.store = store
        self.path = path
        self.staged: str | None = None
        fs = store.fs
        if store.renames:
            folder, name = posixpath.split(path)
            self.staged = posixpath.join(folder, f"{STAGING}{uuid.uuid4().hex}-{name}"[:200])
            fs.makedirs(folder, exist_ok=True)
            self.file = fs.open(self.staged, "wb")
        else:
            self.file = fs.open(path, "wb", autocommit=False, block_size=BLOCK)

    def write(self, data: bytes | bytearray) -> None:
        self.file.write(data)

    def commit(self) -> None:
        self.file.close()
        if self.staged is None:
            self.file.commit()
        elif self.store.local:
            os.replace(self.staged, self.path)
        else:
            self.store.fs.mv(self.staged, self.path)

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            if self.staged is not None:
                self.file.close()
                self.store.fs.rm_file(self.staged)
            else:
                self.file.discard()


class Store:
    def __init__(self, url: str, options: dict[str, Any], threads: int = 32) -> None:
        # No listing cache (s3fs keeps one per process): other edges change the store too.
        self.fs, root = fsspec.core.url_to_fs(url, **{"use_listings_cache": False, **options})
        self.local = isinstance(self.fs, LocalFileSystem)
        self.renames = self.local or isinstance(self.fs, MemoryFileSystem)
        self.root = root.rstrip("/")
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="busgate-files")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the store's pool; store failures as the edge's errors."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, fn, *args)
        except errors.BusgateError:
            raise
        except Exception as exc:
            raise _unavailable(exc) from None

    def full(self, folder: str, name: str = "") -> str:
        """The store path of ``name`` in ``folder`` ('' = the root, a shared space)."""
        return posixpath.join(self.root or "/", folder, name).rstrip("/")

    def _info(self, path: str) -> dict[str, Any]:
        info: dict[str, Any] = self.fs.info(path)
        if info.get("type") != "file":
            raise FileNotFoundError(path)
        return info

    async def info(self, folder: str, name: str) -> dict[str, Any]:
        return await self.run(self._info, self.full(folder, name))

    def _list(self, base: str) -> list[FileInfo]:
        try:
            found: dict[str, dict[str, Any]] = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return []
        prefix = self.fs._strip_protocol(base).rstrip("/") + "/"
        out = []
        for path, info in sorted(found.items()):
            name = path[len(prefix) :] if path.startswith(prefix) else path
            if info.get("type") != "file" or posixpath.basename(name).startswith(STAGING):
                continue
            out.append(FileInfo(name, int(info.get("size") or 0), etag_of(info), modified_of(info)))
        return out

    async def list(self, folder: str) -> list[FileInfo]:
        return await self.run(self._list, self.full(folder))

    async def delete(self, folder: str, name: str) -> None:
        path = self.full(folder, name)

        def delete() -> None:
            self._info(path)  # 404 for a missing file or a folder
            self.fs.rm_file(path)  # one file: never a glob, never recursive

        await self.run(delete)

    async def begin(self, folder: str, name: str) -> Upload:
        """The staged upload. A caller cancelled meanwhile (the client went away) never gets
        it, so the staged file is discarded here once the pool has made it."""
        made = asyncio.get_running_loop().run_in_executor(
            self.pool, Upload, self, self.full(folder, name)
        )
        try:
            return await asyncio.shield(made)
        except asyncio.CancelledError:
            made.add_done_callback(_discard_when_made)
            raise
        except errors.BusgateError:
            raise
        except Exception as exc:
            raise _unavailable(exc) from None

    def sweep(self, older_than: float = STALE_UPLOAD) -> int:
        """Remove the staged uploads of a local folder not written for ``older_than``
        seconds: an edge that was killed mid-upload never discards its own. Returns how
        many went. Other stores need none: ``memory://`` lives in its process, and an
        object store's unfinished multipart uploads are its lifecycle rules' to abort."""
        if not self.local:
            return 0
        due = time.time() - older_than
        removed = 0
        for folder, _, names in os.walk(self.root or "/"):
            for name in names:
                if not name.startswith(STAGING):
                    continue
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):  # another edge swept it, or writes it
                    if os.stat(path, follow_symlinks=False).st_mtime < due:
                        os.remove(path)
                        removed += 1
        return removed

    async def open_read(self, path: str) -> Any:
        return await self.run(
            lambda: self.fs.open(path, "rb", block_size=READ_BLOCK, cache_type="readahead")
        )


def _discard_when_made(made: asyncio.Future[Upload]) -> None:
    if made.cancelled() or made.exception() is not None:
        return
    upload = made.result()
    with contextlib.suppress(RuntimeError):  # the pool is shut down: the edge is stopping
        upload.store.pool.submit(upload.discard)
