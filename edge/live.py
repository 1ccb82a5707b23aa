"""The config an edge node runs now, swapped whole when a refresh applies a new one.

aiohttp freezes an application's state when it starts, so handlers read the config through
this holder (``keys.LIVE``) instead of ``app[keys.CONFIG]`` (which stays the config the node
started with). A call reads it once, at its start, and keeps that config to its end: a swap
never changes a call in flight.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from busgate.bus.config_source import ConfigSource, fixed
from busgate.contracts.config import Config, ConfigError
from busgate.edge import keys
from busgate.edge.tokens import TokenService


def shaping(config: Config) -> dict[str, tuple[object, ...]]:
    """The channel shaping an edge compiles once, at start (aliases, response headers, error
    detail, audit: ``edge.app``), per channel that has any."""
    out: dict[str, tuple[object, ...]] = {}
    for name, channel in config.channels.items():
        rules = {
            key: (rule.response_headers, rule.errors, rule.audit, rule.audit_body)
            for key, rule in channel.paths.items()
            if rule.response_headers or rule.errors is not None or rule.audit or rule.audit_body
        }
        if channel.aliases or channel.response_headers or channel.errors != "full" or rules:
            out[name] = (channel.aliases, channel.response_headers, channel.errors, rules)
    return out


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
        if shaping(config) != shaping(old):
            raise ConfigError(
                "channels: aliases, response headers, error detail or audit changed; "
                "restart this edge to apply the change"
            )
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
            for service in retired:  # their JWKS clients; calls verified by them are done
                await service.close()
        self.config = config


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
