"""The sample auth runner over HTTP: register, login, delete; argon2 hashes in SQLite."""

from __future__ import annotations

import sqlite3

import pytest
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from busgate.runners.auth import SEED_PASSWORD_ENV, UserStore, create_app

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified = 0

    def verify(self, hash, password):
        self.verified += 1
        return super().verify(hash, password)


@pytest.fixture
async def runner(tmp_path, monkeypatch):
    monkeypatch.setenv(SEED_PASSWORD_ENV, "seed-password")
    hasher = CountingHasher()
    app = create_app(
        str(tmp_path / "users.db"), [("demo", ["user"]), ("admin", ["user", "admin"])], hasher
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    client.hasher = hasher
    client.db = tmp_path / "users.db"
    yield client
    await client.close()


async def call(client, action: str, parameters=None, meta=None, kind: str = "password"):
    resp = await client.post(
        f"/api/auth/{action}/{kind}", json={"parameters": parameters, "meta": meta or {}}
    )
    return resp.status, await resp.json()


async def test_seeded_users_log_in(runner):
    status, user = await call(runner, "login", {"username": "admin", "password": "seed-password"})
    assert status == 200
    subject = user.pop("subject")
    assert user == {"id": 2, "username": "admin", "roles": ["user", "admin"]}
    assert subject.startswith("u:")


async def test_passwords_are_stored_as_argon2_hashes(runner):
    with sqlite3.connect(runner.db) as db:
        rows = db.execute("SELECT hash FROM users").fetchall()
    assert rows and all(h.startswith("$argon2id$") for (h,) in rows)
    assert not any("seed-password" in h for (h,) in rows)


async def test_wrong_password_and_unknown_user_answer_alike(runner):
    before = runner.hasher.verified
    wrong = await call(runner, "login", {"username": "demo", "password": "nope-nope"})
    unknown = await call(runner, "login", {"username": "ghost", "password": "seed-password"})
    assert wrong == unknown
    assert wrong[0] == 401 and wrong[1]["error"]["message"] == "invalid username or password"
    # Both paths hash once: an unknown user is checked against a dummy hash (similar timing).
    assert runner.hasher.verified == before + 2


async def test_register_login_delete(runner):
    status, user = await call(runner, "register", {"username": "neo", "password": "matrix-99"})
    assert status == 200 and user["username"] == "neo" and user["roles"] == ["user"]
    status, _ = await call(runner, "register", {"username": "neo", "password": "matrix-99"})
    assert status == 409
    status, _ = await call(runner, "login", {"username": "neo", "password": "matrix-99"})
    assert status == 200
    status, _ = await call(runner, "delete", {}, {"identity": None})
    assert status == 401
    status, body = await call(runner, "delete", {}, {"identity": {"subject": "neo"}})
    assert status == 200 and body == {"deleted": "neo"}
    status, _ = await call(runner, "login", {"username": "neo", "password": "matrix-99"})
    assert status == 401


@pytest.mark.parametrize(
    "params",
    [
        {"username": "bad name!", "password": "long-enough"},
        {"username": "ok", "password": "short"},
        {"username": "ok"},
        None,
    ],
)
async def test_register_validates(runner, params):
    status, body = await call(runner, "register", params)
    assert status == 400 and body["error"]["code"] == "bad_request"


async def test_unknown_type_and_saga(runner):
    assert (await call(runner, "login", {}, kind="otp"))[0] == 404
    assert (await call(runner, "shout", {}))[0] == 404


def test_seeding_needs_the_password_in_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(SEED_PASSWORD_ENV, raising=False)
    with pytest.raises(SystemExit, match=SEED_PASSWORD_ENV):
        create_app(str(tmp_path / "u.db"), [("demo", ["user"])], FAST)


def test_an_outdated_hash_is_upgraded_at_login(tmp_path):
    weak = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    store = UserStore(str(tmp_path / "u.db"), weak)
    store.seed("demo", "seed-password", ["user"])
    store.close()
    stronger = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    store = UserStore(str(tmp_path / "u.db"), stronger)
    assert store.login("demo", "seed-password") is not None
    row = store._row("demo")
    assert row is not None and not stronger.check_needs_rehash(row[2])
    store.close()


async def test_a_name_registered_again_is_another_subject(runner):
    """Issue 8 item 6: the subject is a random id per registration, not the username, so
    nothing issued to a deleted account can act as a new one of the same name."""
    creds = {"username": "neo", "password": "matrix-99"}
    status, first = await call(runner, "register", creds)
    assert status == 200 and first["subject"].startswith("u:")
    assert first["subject"] != "neo"
    status, login = await call(runner, "login", creds)
    assert login["subject"] == first["subject"]
    status, _ = await call(runner, "delete", {}, {"identity": {"subject": first["subject"]}})
    assert status == 200
    status, again = await call(runner, "register", creds)
    assert status == 200 and again["subject"] not in (first["subject"], "neo")
    # the old subject names nobody now
    status, _ = await call(runner, "delete", {}, {"identity": {"subject": first["subject"]}})
    assert status == 404


def test_a_store_from_before_subjects_gets_them(tmp_path):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, username TEXT UNIQUE NOT NULL,"
        " hash TEXT NOT NULL, roles TEXT NOT NULL DEFAULT 'user')"
    )
    con.execute("INSERT INTO users (username, hash) VALUES ('old', ?)", (FAST.hash("pw-pw-pw-pw"),))
    con.commit()
    con.close()
    store = UserStore(str(db), FAST)
    user = store.login("old", "pw-pw-pw-pw")
    assert user is not None and user["subject"].startswith("u:")
    store.close()
