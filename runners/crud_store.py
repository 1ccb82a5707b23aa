"""Where the CRUD runner keeps its documents: SQLite (aiosqlite) or PostgreSQL (asyncpg).

One table per state, each row a JSON document (``TEXT`` in SQLite, ``JSONB`` in
PostgreSQL) with its id and a version. Every write is a compare-and-set on the version
(``UPDATE … WHERE id = ? AND version = ?``), so two writers that read the same version
cannot both win: the second gets :class:`VersionMismatch` (HTTP 412) instead of silently
overwriting the first.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import msgspec

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
"""A state (table) name: safe to quote as an SQL identifier on both databases."""
FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
"""A field a list may filter on: safe inside a JSON path on both databases."""


class StoreError(Exception):
    """Base of what the store refuses; the runner maps each to an HTTP status."""


class Missing(StoreError):
    """No document with that id (404)."""


class Exists(StoreError):
    """A document with that id exists already (409)."""


class VersionMismatch(StoreError):
    """The document is not at the version the writer expected (412)."""


class Invalid(StoreError):
    """The database refuses a value the client sent (400): PostgreSQL takes no NUL
    character (``\\u0000``) in a JSONB string or a text parameter."""


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    import asyncpg

    try:
        yield
    except asyncpg.DataError as exc:
        raise Invalid(type(exc).__name__) from None


Doc = dict[str, Any]


class Store(abc.ABC):
    """Documents per state, each with its version (1 at creation, +1 per write)."""

    def __init__(self) -> None:
        self._tables: set[str] = set()
        self._creating = asyncio.Lock()

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def _create_table(self, state: str) -> None: ...

    async def table(self, state: str) -> str:
        """The quoted table of ``state``, created at first use."""
        if state not in self._tables:
            async with self._creating:
                if state not in self._tables:
                    await self._create_table(state)
                    self._tables.add(state)
        return f'"doc_{state}"'

    @abc.abstractmethod
    async def get(self, state: str, id_: str) -> tuple[Doc, int]:
        """The document and its version, or :class:`Missing`."""

    @abc.abstractmethod
    async def insert(self, state: str, id_: str, doc: Doc) -> None:
        """Create at version 1, or :class:`Exists`."""

    @abc.abstractmethod
    async def update(self, state: str, id_: str, doc: Doc, version: int | None) -> int:
        """Replace; when ``version`` is given only if the document is at it. The new version,
        or :class:`Missing` / :class:`VersionMismatch`."""

    @abc.abstractmethod
    async def delete(self, state: str, id_: str, version: int | None) -> None:
        """Remove (only at ``version`` when given), or :class:`Missing` / ``VersionMismatch``."""

    @abc.abstractmethod
    async def list(
        self, state: str, where: Mapping[str, str], limit: int, offset: int
    ) -> tuple[list[Doc], int]:
        """A page of documents in creation order whose fields equal ``where`` (compared as
        text: ``5``, ``"5"`` and ``5.0``… as their JSON text, ``true``/``false``), and how
        many match in all."""


class SqliteStore(Store):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._db: Any = None

    async def open(self) -> None:
        import aiosqlite

        # Autocommit: every statement is its own transaction. With the sqlite3 module's
        # implicit transactions, a refused INSERT (409) would leave one open, holding the
        # file's write lock, and a rollback would also undo another request's statement
        # that shares the connection.
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA busy_timeout=5000")

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()

    async def _create_table(self, state: str) -> None:
        await self._db.execute(
            f'CREATE TABLE IF NOT EXISTS "doc_{state}" (seq INTEGER PRIMARY KEY AUTOINCREMENT,'
            " id TEXT NOT NULL UNIQUE, version INTEGER NOT NULL, doc TEXT NOT NULL)"
        )

    async def get(self, state: str, id_: str) -> tuple[Doc, int]:
        table = await self.table(state)
        async with self._db.execute(
            f"SELECT doc, version FROM {table} WHERE id = ?", (id_,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            raise Missing(id_)
        return _decode(row[0]), int(row[1])

    async def insert(self, state: str, id_: str, doc: Doc) -> None:
        import sqlite3

        table = await self.table(state)
        try:
            await self._db.execute(
                f"INSERT INTO {table} (id, version, doc) VALUES (?, 1, ?)",
                (id_, _encode(doc).decode()),
            )
        except sqlite3.IntegrityError:
            raise Exists(id_) from None

    async def _changed(self, state: str, id_: str, version: int | None, rowcount: int) -> None:
        """After a write that changed no row: which of Missing or VersionMismatch it was."""
        if rowcount == 0:
            await self.get(state, id_)  # raises Missing
            raise VersionMismatch(f"{id_} is not at version {version}")

    async def update(self, state: str, id_: str, doc: Doc, version: int | None) -> int:
        table = await self.table(state)
        text = _encode(doc).decode()
        if version is None:
            sql = f"UPDATE {table} SET doc = ?, version = version + 1 WHERE id = ?"
            cur = await self._db.execute(sql, (text, id_))
        else:
            sql = f"UPDATE {table} SET doc = ?, version = version + 1 WHERE id = ? AND version = ?"
            cur = await self._db.execute(sql, (text, id_, version))
        await self._changed(state, id_, version, cur.rowcount)
        return (await self.get(state, id_))[1] if version is None else version + 1

    async def delete(self, state: str, id_: str, version: int | None) -> None:
        table = await self.table(state)
        if version is None:
            cur = await self._db.execute(f"DELETE FROM {table} WHERE id = ?", (id_,))
        else:
            cur = await self._db.execute(
                f"DELETE FROM {table} WHERE id = ? AND version = ?", (id_, version)
            )
        await self._changed(state, id_, version, cur.rowcount)

    async def list(
        self, state: str, where: Mapping[str, str], limit: int, offset: int
    ) -> tuple[list[Doc], int]:
        table = await self.table(state)
        clauses, args = [], []
        for key, value in where.items():
            path = f'$."{key}"'
            clauses.append(
                "(CASE json_type(doc, ?) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false'"
                " ELSE CAST(json_extract(doc, ?) AS TEXT) END) = ?"
            )
            args += [path, path, value]
        cond = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self._db.execute(f"SELECT count(*) FROM {table} {cond}", args) as cur:
            row = await cur.fetchone()
            total = int(row[0]) if row else 0
        async with self._db.execute(
            f"SELECT doc FROM {table} {cond} ORDER BY seq LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ) as cur:
            rows = await cur.fetchall()
        return [_decode(r[0]) for r in rows], total


class PostgresStore(Store):
    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn
        self._pool: Any = None

    async def open(self) -> None:
        import asyncpg

        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=10)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def _create_table(self, state: str) -> None:
        # Two runners creating the same table at once: the loser's "already exists" is fine.
        import asyncpg

        with contextlib.suppress(asyncpg.UniqueViolationError):
            await self._pool.execute(
                f'CREATE TABLE IF NOT EXISTS "doc_{state}" (seq BIGSERIAL PRIMARY KEY,'
                " id TEXT NOT NULL UNIQUE, version INTEGER NOT NULL, doc JSONB NOT NULL)"
            )

    async def get(self, state: str, id_: str) -> tuple[Doc, int]:
        with _refusals():
            table = await self.table(state)
            row = await self._pool.fetchrow(f"SELECT doc, version FROM {table} WHERE id = $1", id_)
            if row is None:
                raise Missing(id_)
            return _decode(row["doc"]), int(row["version"])

    async def insert(self, state: str, id_: str, doc: Doc) -> None:
        with _refusals():
            import asyncpg

            table = await self.table(state)
            try:
                await self._pool.execute(
                    f"INSERT INTO {table} (id, version, doc) VALUES ($1, 1, $2::jsonb)",
                    id_,
                    _encode(doc).decode(),
                )
            except asyncpg.UniqueViolationError:
                raise Exists(id_) from None

    async def _missing_or_stale(self, state: str, id_: str, version: int | None) -> None:
        await self.get(state, id_)  # raises Missing
        raise VersionMismatch(f"{id_} is not at version {version}")

    async def update(self, state: str, id_: str, doc: Doc, version: int | None) -> int:
        with _refusals():
            table = await self.table(state)
            text = _encode(doc).decode()
            sql = f"UPDATE {table} SET doc = $1::jsonb, version = version + 1 WHERE id = $2"
            if version is None:
                new = await self._pool.fetchval(sql + " RETURNING version", text, id_)
            else:
                new = await self._pool.fetchval(
                    sql + " AND version = $3 RETURNING version", text, id_, version
                )
            if new is None:
                await self._missing_or_stale(state, id_, version)
            return int(new)

    async def delete(self, state: str, id_: str, version: int | None) -> None:
        with _refusals():
            table = await self.table(state)
            if version is None:
                gone = await self._pool.fetchval(
                    f"DELETE FROM {table} WHERE id = $1 RETURNING id", id_
                )
            else:
                gone = await self._pool.fetchval(
                    f"DELETE FROM {table} WHERE id = $1 AND version = $2 RETURNING id", id_, version
                )
            if gone is None:
                await self._missing_or_stale(state, id_, version)

    async def list(
        self, state: str, where: Mapping[str, str], limit: int, offset: int
    ) -> tuple[list[Doc], int]:
        with _refusals():
            table = await self.table(state)
            clauses, args = [], []
            for key, value in where.items():
                args += [key, value]
                clauses.append(f"doc->>${len(args) - 1} = ${len(args)}")
            cond = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            total = await self._pool.fetchval(f"SELECT count(*) FROM {table} {cond}", *args)
            n = len(args)
            rows = await self._pool.fetch(
                f"SELECT doc FROM {table} {cond} ORDER BY seq LIMIT ${n + 1} OFFSET ${n + 2}",
                *args,
                limit,
                offset,
            )
            return [_decode(r["doc"]) for r in rows], int(total)


def open_store(url: str) -> Store:
    """``sqlite:///PATH`` (or a bare path, or ``sqlite://:memory:``) or ``postgresql://…``."""
    scheme = urlsplit(url).scheme
    if scheme in ("postgres", "postgresql"):
        return PostgresStore(url)
    if scheme == "sqlite":
        path = url.split("://", 1)[1]
        return SqliteStore(
            path[1:] if path.startswith("/") else path
        )  # as SQLAlchemy: 4 / = absolute
    if scheme == "":
        return SqliteStore(url)
    raise ValueError(f"--db {url!r}: use sqlite:///PATH or postgresql://…")
