"""Shared pieces of the auth tests: a config with a secured channel, a fake auth provider on
the memory bus, and key pairs written to files."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from busgate.bus.base import Responder
from busgate.bus.sessions import Session, Sessions, SubjectEnd
from busgate.bus.store import MemoryBackend, Store
from busgate.bus.store.kafka import KafkaStore
from busgate.bus.store.memory import MemoryStore
from busgate.bus.store.nats import NatsStore
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
    edge: Callable[[], Awaitable[TestClient]]
    """Another edge node: its own app and session view, on the same bus and store."""

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


STORES = [
    pytest.param("memory", id="memory"),
    pytest.param("nats", marks=pytest.mark.nats, id="nats"),
    pytest.param("kafka", marks=pytest.mark.kafka, id="kafka"),
]


@pytest.fixture(name="session_store")
def session_store_fixture() -> str:
    """Where the sessions live: process memory; a test module may define its own
    ``session_store`` parametrized over ``STORES`` (Kafka uses the session's ``tansu_broker``)."""
    return "memory"


class SessionNodes:
    """Opens the sessions of one edge node after another on one backend (as separate edges
    would: own connections), each test in its own namespace."""

    def __init__(self, kind: str, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.request = request
        self.prefix = f"t{secrets.token_hex(4)}"
        self.backend = MemoryBackend()
        self.opened: list[Sessions] = []
        self.connections: list[Any] = []

    async def open(self, max_age: float = 31 * 86_400) -> Sessions:
        stores: list[Store[Any]]
        if self.kind == "memory":
            stores = [
                MemoryStore(kind, t, max_age=max_age, backend=self.backend)
                for kind, t in (("sessions", Session), ("subjects", SubjectEnd))
            ]
        elif self.kind == "nats":
            server = self.request.getfixturevalue("nats_server")
            nc = await nats.connect(server.url)
            self.connections.append(nc)
            stores = [
                NatsStore(nc, kind, t, prefix=self.prefix, max_age=max_age)
                for kind, t in (("sessions", Session), ("subjects", SubjectEnd))
            ]
        else:
            broker = self.request.getfixturevalue("tansu_broker")
            servers = f"{broker.host}:{broker.port}"
            stores = [
                KafkaStore(servers, kind, t, prefix=self.prefix, max_age=max_age)
                for kind, t in (("sessions", Session), ("subjects", SubjectEnd))
            ]
        sessions = Sessions(stores[0], stores[1], max_age)
        await sessions.start()
        self.opened.append(sessions)
        return sessions

    async def close(self) -> None:
        for sessions in self.opened:
            await sessions.close()
        for nc in self.connections:
            await nc.close()


@pytest.fixture(name="secured")
async def secured_fixture(session_store: str, request: pytest.FixtureRequest):
    clients: list[TestClient] = []
    nodes = SessionNodes(session_store, request)

    async def start(config: Config | None = None) -> Secured:
        bus = MemoryBus()
        provider = Provider()
        await bus.serve(["demo", "auth"], provider)
        config = config or auth_config()

        async def edge() -> TestClient:
            sessions = await nodes.open()
            client = TestClient(TestServer(create_app(config, bus=bus, sessions=sessions)))
            await client.start_server()
            clients.append(client)
            client.sessions = sessions  # type: ignore[attr-defined]
            return client

        client = await edge()
        return Secured(client, client.sessions, provider, config, edge)  # type: ignore[attr-defined]

    yield start
    for client in clients:
        await client.close()
    await nodes.close()
