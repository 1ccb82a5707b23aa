"""The CRUD runner's SQLite store when two runners share one database file."""

from __future__ import annotations

import asyncio

import pytest

from busgate.runners.crud_store import Exists, SqliteStore


async def test_a_refused_insert_leaves_no_lock_on_the_file(tmp_path):
    """A 409 in one runner must not hold the write lock the other runner needs."""
    path = str(tmp_path / "shared.db")
    one, two = SqliteStore(path), SqliteStore(path)
    await one.open()
    await two.open()
    try:
        await one.insert("things", "a", {"id": "a"})
        with pytest.raises(Exists):
            await one.insert("things", "a", {"id": "a"})
        async with asyncio.timeout(3):  # busy_timeout is 5 s: a held lock fails this
            await two.insert("things", "b", {"id": "b"})
            assert await two.update("things", "a", {"id": "a", "n": 1}, 1) == 2
        assert (await one.get("things", "a")) == ({"id": "a", "n": 1}, 2)
    finally:
        await one.close()
        await two.close()
