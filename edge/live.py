"""The config an edge node runs now, swapped whole when a refresh applies a new one.

aiohttp freezes an application's state when it starts, so handlers read the config through
this holder (``keys.LIVE``) instead of ``app[keys.CONFIG]`` (which stays the config the node
started with). A call reads it once, at its start, and keeps that config to its end: a swap
never changes a call in flight. The channel shaping compiled from it (aliases, response
headers, error detail, audit) is compiled anew and swapped in place (``reshape``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from busgate.bus.config_source import ConfigSource, fixed
from busgate.contracts.config import Config, ConfigError
from busgate.edge import keys
from busgate.edge.aliases import compile_aliases
from busgate.edge.audit import Audit
from busgate.edge.error_detail import ErrorLevels
from busgate.edge.response_headers import compile_header_rules
from busgate.edge.tokens import TokenService


def reshape(app: web.Application, config: Config) -> Callable[[], None]:
    """Compile ``config``'s channel shaping (aliases, response headers, error detail, audit);
    raises ConfigError (a bad alias expression, audit on a node started without) before
    anything changes. The function returned swaps it in, with no await: a call sees the old
    tables or the new ones, and one in flight keeps the alias it matched."""
    aliases = compile_aliases(config)
    headers = compile_header_rules(config)
    levels = ErrorLevels(config)
    audited = Audit(config)
    audit = app.get(keys.AUDIT)
    if audited and audit is None:  # no audit middleware: no cost per call until a restart
        raise ConfigError("channels: audit on a node that started without any; restart it")

    def swap() -> None:
        # aiohttp froze the app's state: the tables are swapped in place, not replaced.
        _replace(app[keys.ALIASES], aliases)
        _replace(app[keys.RESPONSE_HEADERS], headers)
        app[keys.ERROR_LEVELS].channels = levels.channels
        if audit is not None:
            _replace(audit.channels, audited.channels)

    return swap


def _replace(table: dict[str, Any], new: dict[str, Any]) -> None:
    table.clear()
    table.update(new)


class LiveConfig:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.source: ConfigSource | None = None

    async def apply(self, app: web.Application, config: Config) -> None:
        """Make ``config`` the one calls see; raises (and changes nothing) when it cannot."""
        ctx = app.get(keys.AUTH)
        old = self.config
        for name in ("services", "commands"):  # their APIs are built once, at start
            if getattr(config, name) != getattr(old, name):
                raise ConfigError(f"{name}: changed; restart this edge to apply the change")
        swap_shaping = reshape(app, config)
        if ctx is not None:
            if config.tokens and not old.tokens:
                raise ConfigError("tokens: this node started without tokens; restart it")
            rules = any(ch.auth or ch.paths for ch in config.channels.values())
            if rules and not ctx.checking:
                raise ConfigError(
                    "channels: access rules on a node that started without any; restart it"
                )
            services = {
                name: TokenService(name, token, config.gateway.csrf.secret)
                for name, token in config.tokens.items()
            }
            for name, service in services.items():
                previous = ctx.tokens.get(name)
                if previous is not None:
                    service.succeed(previous)
            retired = ctx.swap(config, services)
        else:
            retired = []
        swap_shaping()
        self.config = config
        for service in retired:  # their JWKS clients; calls verified by them are done
            await service.close()


async def live_ctx(app: web.Application) -> AsyncIterator[None]:
    """Follow the config source (after the bus connected): ``gateway.config_source = bus``
    or a file with ``gateway.refresh`` > 0."""
    live = app[keys.LIVE]
    gateway = live.config.gateway
    path = app.get(keys.CONFIG_PATH)
    bus = app[keys.BUS]
    if gateway.config_source != "bus" and not (path and gateway.refresh > 0):
        bus.on_refresh = fixed(bus.node, "edge")
        yield
        return
    source = ConfigSource(live.config, node=bus.node, role="edge", path=path)

    async def apply(config: Config) -> None:
        await live.apply(app, config)

    await source.start(bus, apply)
    live.source = source
    bus.on_refresh = source.answer
    yield
    bus.on_refresh = None
    live.source = None
    await source.close()
