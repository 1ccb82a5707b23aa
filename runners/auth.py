"""The sample auth runner: a user store in SQLite, passwords hashed with argon2.

An RPC runner like the others: ``POST /api/{runner}/{action}/{type}`` with
``{"parameters", "meta"}``; the only type is ``password``. Sagas:

- ``register``: ``{"username", "password"}`` → the new user, role ``user``; 409 if taken.
- ``login``: ``{"username", "password"}`` → ``{"id", "subject", "username", "roles"}``, or
  401. A wrong password and an unknown user get the same answer, and take about as long: an
  unknown user's password is checked against a dummy hash.
- ``delete``: removes the caller (``meta.identity.subject``, set by the gateway).

``subject`` is a random id given at registration, never reused: map the token's ``sub`` from
it (as ``busgate/dev.toml`` does), so that a name registered again after its account was
deleted is another subject, and nothing issued to the old account acts as the new one.
(``delete`` also takes a username as the subject, for configs that map ``sub`` from it.)

``--seed NAME=ROLE[,ROLE…]`` creates (or resets) users with the password in the environment
variable ``BUSGATE_AUTH_SEED_PASSWORD`` — never on the command line, where ``ps`` shows it.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import sqlite3
import threading
from typing import Any

import msgspec
from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

SEED_PASSWORD_ENV = "BUSGATE_AUTH_SEED_PASSWORD"
_USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_MIN_PASSWORD, _MAX_PASSWORD = 8, 1024
_WRONG = "invalid username or password"

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def _new_subject() -> str:
    """A subject id: random, so never one a deleted account had; with a ``:``, which no
    username holds, so a username never names another user's subject."""
    return f"u:{secrets.token_hex(16)}"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(data), status=status, content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message}}, status)


class UserStore:
    """SQLite behind a lock; every call runs in a worker thread (argon2 is CPU-bound)."""

    def __init__(self, path: str, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS users ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " username TEXT UNIQUE NOT NULL,"
            " hash TEXT NOT NULL,"
            " roles TEXT NOT NULL DEFAULT 'user',"
            " subject TEXT UNIQUE)"
        )
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(users)")]
        if "subject" not in columns:  # a store from before subjects
            self._db.execute("ALTER TABLE users ADD COLUMN subject TEXT")
            self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS users_subject ON users(subject)")
        for (row_id,) in self._db.execute("SELECT id FROM users WHERE subject IS NULL").fetchall():
            self._db.execute("UPDATE users SET subject = ? WHERE id = ?", (_new_subject(), row_id))
        self._lock = threading.Lock()
        self._dummy = self.hasher.hash(secrets.token_hex(16))

    @staticmethod
    def _user(row: tuple[Any, ...]) -> dict[str, Any]:
        return {
            "id": row[0],
            "subject": row[4],
            "username": row[1],
            "roles": [r for r in row[3].split(",") if r],
        }

    def _row(self, username: str) -> tuple[Any, ...] | None:
        with self._lock:
            cur = self._db.execute(
                "SELECT id, username, hash, roles, subject FROM users WHERE username = ?",
                (username,),
            )
            row: tuple[Any, ...] | None = cur.fetchone()
            return row

    def seed(self, username: str, password: str, roles: list[str]) -> None:
        digest = self.hasher.hash(password)
        with self._lock:
            self._db.execute(
                "INSERT INTO users (username, hash, roles, subject) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(username) DO UPDATE SET hash = excluded.hash, roles = excluded.roles",
                (username, digest, ",".join(roles), _new_subject()),
            )

    def register(self, username: str, password: str) -> dict[str, Any] | None:
        digest = self.hasher.hash(password)
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO users (username, hash, roles, subject) VALUES (?, ?, 'user', ?)",
                    (username, digest, _new_subject()),
                )
            except sqlite3.IntegrityError:
                return None
        row = self._row(username)
        return self._user(row) if row else None

    def login(self, username: str, password: str) -> dict[str, Any] | None:
        row = self._row(username)
        try:
            self.hasher.verify(row[2] if row else self._dummy, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        if self.hasher.check_needs_rehash(row[2]):
            with self._lock:
                self._db.execute(
                    "UPDATE users SET hash = ? WHERE id = ?", (self.hasher.hash(password), row[0])
                )
        return self._user(row)

    def delete(self, subject: str) -> bool:
        """Remove the user with this subject id (or, failing that, this username)."""
        with self._lock:
            cur = self._db.execute("DELETE FROM users WHERE subject = ?", (subject,))
            if cur.rowcount == 0:
                cur = self._db.execute("DELETE FROM users WHERE username = ?", (subject,))
            return cur.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


STORE = web.AppKey("store", UserStore)


def _credentials(params: Any) -> tuple[str, str] | None:
    if not isinstance(params, dict):
        return None
    username, password = params.get("username"), params.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        return None
    return username, password


async def saga(request: web.Request) -> web.Response:
    try:
        envelope = _decode(await request.read())
    except msgspec.DecodeError:
        return _error(400, "bad_request", "body is not JSON")
    if not isinstance(envelope, dict):
        return _error(400, "bad_request", "body is not a JSON object")
    params, meta = envelope.get("parameters"), envelope.get("meta") or {}
    action, kind = request.match_info["action"], request.match_info["type"]
    if kind != "password":
        return _error(404, "not_found", f"no auth type {kind!r}; use 'password'")
    store = request.app[STORE]
    match action:
        case "login":
            creds = _credentials(params)
            if creds is None:
                return _error(400, "bad_request", "send username and password")
            user = await asyncio.to_thread(store.login, *creds)
            if user is None:
                return _error(401, "unauthorized", _WRONG)
            return _json(user)
        case "register":
            creds = _credentials(params)
            if creds is None or not _USERNAME.match(creds[0]):
                return _error(400, "bad_request", "username: 1-64 of A-Z a-z 0-9 _ . @ -")
            if not _MIN_PASSWORD <= len(creds[1]) <= _MAX_PASSWORD:
                return _error(
                    400, "bad_request", f"password: {_MIN_PASSWORD}-{_MAX_PASSWORD} characters"
                )
            user = await asyncio.to_thread(store.register, *creds)
            if user is None:
                return _error(409, "conflict", f"username {creds[0]!r} is taken")
            return _json(user)
        case "delete":
            identity = meta.get("identity") if isinstance(meta, dict) else None
            subject = identity.get("subject") if isinstance(identity, dict) else None
            if not subject:
                return _error(401, "unauthorized", "no authenticated caller")
            if not await asyncio.to_thread(store.delete, subject):
                return _error(404, "not_found", "no such user")
            return _json({"deleted": subject})
    return _error(404, "not_found", f"no auth saga {action!r}")


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


def create_app(
    db: str,
    seeds: list[tuple[str, list[str]]] | None = None,
    hasher: PasswordHasher | None = None,
) -> web.Application:
    store = UserStore(db, hasher)
    if seeds:
        password = os.environ.get(SEED_PASSWORD_ENV, "")
        if len(password) < _MIN_PASSWORD:
            raise SystemExit(f"--seed needs {SEED_PASSWORD_ENV} (at least {_MIN_PASSWORD} chars)")
        for username, roles in seeds:
            store.seed(username, password, roles)
    app = web.Application()
    app[STORE] = store

    async def close(app: web.Application) -> None:
        app[STORE].close()

    app.on_cleanup.append(close)
    app.router.add_post("/api/{runner}/{action}/{type}", saga)
    app.router.add_get("/healthz", healthz)
    return app


def parse_seed(value: str) -> tuple[str, list[str]]:
    username, _, roles = value.partition("=")
    if not _USERNAME.match(username):
        raise ValueError(f"bad seed user {username!r}")
    return username, [r.strip() for r in (roles or "user").split(",") if r.strip()]


def run(listen: str, db: str, seeds: list[str] | None = None) -> None:
    host, _, port = listen.rpartition(":")
    app = create_app(db, [parse_seed(s) for s in seeds or []])
    web.run_app(app, host=host or "127.0.0.1", port=int(port), access_log=None, print=None)
