"""``/api/control``: what a node runs (systems, channels, services, tokens; secrets
redacted), and a refresh of the whole fleet's config over the control subject.

Two locks, both needed: the caller's address must be inside ``gateway.control_allow``
(checked first, on the socket's peer address, never on a forwarded header a client can
write) and its token must carry ``gateway.control_role``. Anything else is 403 (401 without
a valid token); with ``gateway.controllers.control = false`` the routes do not exist (404).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import msgspec
from aiohttp import web

from busgate.contracts import errors
from busgate.contracts.codec import json_encode
from busgate.contracts.config import Config, ConfigError
from busgate.edge import keys
from busgate.edge.middleware.auth import authenticate
from busgate.edge.responses import JSON

COMPONENTS = ("systems", "channels", "services", "tokens")
REDACTED = "<redacted>"
_SECRET_KEY = re.compile(r"secret|password|passwd|private_key|^hash$|credential|sasl", re.I)
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
REFRESH_WAIT = 1.0
"""Seconds ``POST /api/control`` collects the nodes' answers (less once all known ones
answered: the config source's node reports say how many there are)."""


def redact(value: Any, key: str = "") -> Any:
    """``value`` with every secret replaced: keys that name one (``secret``, ``private_key``,
    API key ``hash``, passwords), all header values and file stores' ``options`` (they carry
    credentials: s3fs's ``key``, ``secret``, ``token``), and user info in URLs."""
    if isinstance(value, dict):
        if key in ("headers", "options"):
            return {k: REDACTED for k in value}
        return {k: REDACTED if _SECRET_KEY.search(k) else redact(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        return _USERINFO.sub(f"{REDACTED}@", value)
    return value


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def allowed_ip(networks: list[Network], remote: str | None) -> bool:
    """Whether the caller's address is in one of ``networks`` (``gateway.control_allow``)."""
    try:
        ip = ipaddress.ip_address((remote or "").split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


def operator_networks(config: Config) -> list[Network]:
    """``gateway.control_allow``: where the control API and the bus's AsyncAPI document are
    served."""
    try:
        return [ipaddress.ip_network(c, strict=False) for c in config.gateway.control_allow]
    except ValueError as exc:
        raise ConfigError(f"gateway.control_allow: {exc}") from None


class Control:
    def __init__(self, config: Config) -> None:
        gateway = config.gateway
        self.networks = operator_networks(config)
        self.role = gateway.control_role
        self.token = gateway.control_token
        if self.token and self.token not in config.tokens:
            raise ConfigError(f"gateway.control_token: unknown token {self.token!r}")

    async def check(self, request: web.Request) -> None:
        if not allowed_ip(self.networks, request.remote):
            raise errors.Forbidden("the control API is not open to this address")
        ctx = request.app.get(keys.AUTH)
        if ctx is None:
            raise errors.Forbidden("the control API needs a token (gateway.control_token)")
        name = self.token or (next(iter(ctx.tokens)) if len(ctx.tokens) == 1 else "")
        service = ctx.tokens.get(name)
        if service is None:
            raise errors.Forbidden("the control API needs a token (gateway.control_token)")
        identity, _ = await authenticate(request, service, ctx)
        if identity is None:
            raise errors.Unauthorized("the control API needs a token")
        if self.role not in identity.roles:
            raise errors.Forbidden(f"the control API needs the role {self.role!r}")

    async def show(self, request: web.Request) -> web.Response:
        await self.check(request)
        component, name = request.match_info["component"], request.match_info["id"]
        table = self._table(request, component)
        if name != "*" and name not in table:
            raise errors.NotFound(f"no {component} entry {name!r}")
        items = table if name == "*" else {name: table[name]}
        return self._json(
            {
                "node": request.app[keys.BUS].node,
                "revision": self._revision(request),
                component: {k: redact(msgspec.to_builtins(v)) for k, v in items.items()},
            }
        )

    async def refresh(self, request: web.Request) -> web.Response:
        await self.check(request)
        component = request.match_info.get("component", "")
        name = request.match_info.get("id", "")
        if component:
            table = self._table(request, component)
            if name != "*" and name not in table:
                raise errors.NotFound(f"no {component} entry {name!r}")
        live = request.app[keys.LIVE]
        known = 0
        if live.source is not None and live.source.revisions is not None:
            known = len(live.source.revisions.reports())
        answers = await request.app[keys.BUS].refresh_all(
            component, name, wait=REFRESH_WAIT, expect=known
        )
        nodes = [
            {"node": a.node, "role": a.role, "revision": a.revision, "applied": a.ok}
            | ({"error": a.error} if a.error else {})
            for a in sorted(answers, key=lambda a: a.node)
        ]
        return self._json({"refreshed": component or "*", "nodes": nodes})

    def _table(self, request: web.Request, component: str) -> dict[str, Any]:
        if component not in COMPONENTS:
            raise errors.NotFound(f"unknown component {component!r}; one of {list(COMPONENTS)}")
        config = request.app[keys.LIVE].config
        return dict(getattr(config, component))

    @staticmethod
    def _revision(request: web.Request) -> dict[str, Any]:
        source = request.app[keys.LIVE].source
        if source is None:
            return {"number": 0}
        out: dict[str, Any] = {"number": source.revision}
        if source.error:
            out["refused"] = source.failed
            out["error"] = source.error
        return out

    @staticmethod
    def _json(body: dict[str, Any]) -> web.Response:
        return web.Response(body=json_encode(body), content_type=JSON)


def install(app: web.Application, config: Config) -> None:
    if not config.gateway.controllers.control:
        return
    control = Control(config)
    app.router.add_get("/api/control/{component}/{id}", control.show)
    app.router.add_post("/api/control/{component}/{id}", control.refresh)
    app.router.add_post("/api/control", control.refresh)
