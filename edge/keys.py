"""Typed application keys: every piece of shared state an edge handler may read."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from busgate.bus.base import Bus
from busgate.contracts.config import Config
from busgate.contracts.wire import Identity

if TYPE_CHECKING:
    from busgate.edge.aliases import AliasMatch, ChannelAliases
    from busgate.edge.audit import Audit
    from busgate.edge.auth import AuthContext
    from busgate.edge.error_detail import ErrorLevels
    from busgate.edge.idempotency import Idempotency
    from busgate.edge.ids import IdFactory
    from busgate.edge.live import LiveConfig
    from busgate.edge.open_streams import OpenStreams
    from busgate.edge.openapi import OpenApi
    from busgate.edge.resilience import Guards
    from busgate.edge.response_headers import HeaderRules

CONFIG = web.AppKey("config", Config)
BUS = web.AppKey("bus", Bus)
IDS: web.AppKey[IdFactory] = web.AppKey("ids")
AUTH: web.AppKey[AuthContext] = web.AppKey("auth")
STREAMS: web.AppKey[OpenStreams] = web.AppKey("streams")
IDEMPOTENCY: web.AppKey[Idempotency] = web.AppKey("idempotency")
ALIASES: web.AppKey[dict[str, ChannelAliases]] = web.AppKey("aliases")
RESPONSE_HEADERS: web.AppKey[dict[str, HeaderRules]] = web.AppKey("response_headers")
ERROR_LEVELS: web.AppKey[ErrorLevels] = web.AppKey("error_levels")
AUDIT: web.AppKey[Audit] = web.AppKey("audit")
"""Only on a node started with audited paths (its middleware is there)."""
GUARDS: web.AppKey[Guards] = web.AppKey("guards")
LIVE: web.AppKey[LiveConfig] = web.AppKey("live")
"""The config calls run with now (a refresh swaps it); ``CONFIG`` is the one at start."""
OPENAPI: web.AppKey[OpenApi] = web.AppKey("openapi")
CONFIG_PATH = web.AppKey("config_path", str)
"""The file a node was started with, re-read every ``gateway.refresh`` seconds."""

# Per-call state, set by the ids middleware.
REQUEST_ID = web.RequestKey("request_id", str)
TRACEPARENT = web.RequestKey("traceparent", str)
TRACE_ID = web.RequestKey("trace_id", str)

# Set by the auth middleware when the caller is authenticated.
IDENTITY = web.RequestKey("identity", Identity)

# Set by the auth middleware when the path is a channel alias (else the envelope matches it).
ALIAS: web.RequestKey[AliasMatch] = web.RequestKey("alias")
