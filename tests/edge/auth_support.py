"""Shared pieces of the auth tests: a config with a secured channel, a fake auth provider on
the memory bus, and key pairs written to files."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from busgate.bus.base import Responder
from busgate.bus.sessions import Sessions
from busgate.contracts.codec import json_decode, json_encode
from busgate.contracts.config import Config, parse
from busgate.contracts.wire import Reply, Request
from busgate.edge.app import create_app
from busgate.edge.tokens import api_key_hash
from tests.edge.memory_bus import MemoryBus

SECRET = secrets.token_urlsafe(48)
API_KEY = secrets.token_urlsafe(32)
PASSWORD = "correct horse battery"
USERS = {"demo": ["user"], "admin": ["user", "admin"]}


def auth_config(
    token: dict[str, Any] | None = None,
    gateway: dict[str, Any] | None = None,
    paths: dict[str, Any] | None = None,
) -> Config:
    return parse(
        {
            "gateway": {"id": "t", "return_ids": "always", **(gateway or {})},
            "systems": {
                "demo": {"type": "rpc", "base_url": "http://127.0.0.1:9", "timeout": 2.0},
                "auth": {"type": "rpc", "base_url": "http://127.0.0.1:9", "timeout": 2.0},
            },
            "tokens": {
                "main": {
                    "secret": SECRET,
                    "api_key_header": "X-Api-Key",
                    "api_keys": {"billing": {"hash": api_key_hash(API_KEY), "roles": ["service"]}},
                    "claims": [
                        {"name": "sub", "source": "username", "required": True},
                        {"name": "roles", "type": "list", "source": "roles"},
                        {"name": "uid", "type": "int", "source": "id"},
                        {"name": "secret_note", "source": "internal.note", "remove": True},
                    ],
                    **(token or {}),
                }
            },
            "channels": {
                "demo": {"system": "demo"},
                "secure": {
                    "system": "demo",
                    "auth": "main",
                    "paths": paths
                    if paths is not None
                    else {
                        "admin/*": {"roles": {"*": ["admin"]}},
                        "public/*": {"public": True},
                        "old/*": {"disabled": True},
                        "billing/*": {"roles": {"POST": ["service"]}},
                    },
                },
                "auth": {"system": "auth", "auth": "main", "paths": {"*": {"disabled": True}}},
            },
        }
    )


def _reply(req: Request, data: Any, status: int = 200) -> Reply:
    return Reply(
        id=req.id,
        status=status,
        body=json_encode(data),
        headers={"content-type": "application/json"},
    )


class Provider:
    """The memory bus's handler: ``demo`` echoes what it was given (identity included);
    ``auth`` is a user store like runners/auth.py, without argon2 (fast)."""

    def __init__(self) -> None:
        self.users = {name: (PASSWORD, roles) for name, roles in USERS.items()}
        self.calls: list[Request] = []

    async def __call__(self, req: Request, responder: Responder) -> None:
        self.calls.append(req)
        if req.system == "demo":
            identity = msgspec.to_builtins(req.identity) if req.identity else None
            await responder.reply(_reply(req, {"path": req.path, "identity": identity}))
            return
        params = json_decode(req.body) if req.body else {}
        action = req.path.split("/")[0]
        if action == "delete":
            subject = req.identity.subject if req.identity else None
            if subject is None or self.users.pop(subject, None) is None:
                await responder.reply(_reply(req, {"error": "no such user"}, 404))
            else:
                await responder.reply(_reply(req, {"deleted": subject}))
            return
        name, password = params.get("username"), params.get("password")
        if action == "register":
            if name in self.users:
                await responder.reply(_reply(req, {"error": "taken"}, 409))
                return
            self.users[name] = (password, ["user"])
        found = self.users.get(name)
        if found is None or found[0] != password:
            error = {"code": "unauthorized", "message": "invalid username or password"}
            await responder.reply(_reply(req, {"error": error}, 401))
            return
        roles = found[1]
        uid = sorted(self.users).index(name) + 1
        answer = {"id": uid, "username": name, "roles": roles, "internal": {"note": "hidden"}}
        await responder.reply(_reply(req, answer))


def write_keys(directory: Path, kind: str) -> tuple[str, str]:
    """A private/public PEM pair of ``kind`` (rsa, ec, ed25519); returns their paths."""
    private: Any
    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "ec":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    priv = directory / f"{kind}.key"
    pub = directory / f"{kind}.pub"
    priv.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(priv), str(pub)


@dataclass
class Secured:
    client: TestClient
    sessions: Sessions
    provider: Provider
    config: Config

    async def login(self, user: str = "demo", **query: str) -> dict:
        async with self.client.post(
            "/api/auth/login/auth/password",
            json={"username": user, "password": PASSWORD},
            params=query,
        ) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def get(self, path: str, token: str | None = None, **headers: str):
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        resp = await self.client.get(path, headers=headers)
        body = await resp.json()
        resp.release()
        return resp, body


@pytest.fixture(name="secured")
async def secured_fixture():
    clients: list[TestClient] = []

    async def start(config: Config | None = None) -> Secured:
        bus = MemoryBus()
        provider = Provider()
        await bus.serve(["demo", "auth"], provider)
        sessions = Sessions.in_memory()
        await sessions.start()
        config = config or auth_config()
        client = TestClient(TestServer(create_app(config, bus=bus, sessions=sessions)))
        await client.start_server()
        clients.append(client)
        return Secured(client, sessions, provider, config)

    yield start
    for client in clients:
        await client.close()
