"""The declarative configuration (TOML), validated into Structs at load.

Config Structs forbid unknown fields, so a typo is an error that names its key path
(``systems.demo.timeout: Expected `float`, got `str```) rather than a silently ignored key.
Environment variables override single keys: ``BUSGATE__GATEWAY__LISTEN=0.0.0.0:8080`` sets
``gateway.listen``; the value is read as a TOML value when it parses as one, else as a string.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

ENV_PREFIX = "BUSGATE__"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key path."""


class Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Base of every config table."""


class Gateway(Section, frozen=True):
    id: str = "busgate"
    bus: str = "nats://127.0.0.1:4222"
    """``nats://host:port[,nats://…]`` or ``kafka://host:port[,host:port]``."""
    prefix: str = "busgate"
    listen: str = "127.0.0.1:8080"
    request_id_header: str = "X-Request-Id"
    trace_id_header: str = "X-Trace-Id"
    return_ids: Literal["none", "always", "error"] = "none"
    accept_request_id: bool = False
    accept_trace: bool = False
    max_body: int = 10 * 1024 * 1024
    timeout: float = 30.0
    """Default deadline of a call, seconds."""
    forward_headers: tuple[str, ...] = ("accept", "accept-language", "content-type")
    stream_wait: float = 10.0
    """Default pause between saga steps when the runner names none, seconds."""
    stream_heartbeat: float = 15.0
    max_streams: int = 10_000
    max_streams_per_client: int = 100
    max_stream_duration: float = 0.0
    """0 = unlimited."""
    presence_interval: float = 2.0
    presence_ttl: float = 6.0


class RpcSystem(Section, frozen=True, tag="rpc", tag_field="type"):
    base_url: str
    timeout: float = 30.0
    max_connections: int = 100
    headers: dict[str, str] = {}


System = RpcSystem


class Channel(Section, frozen=True):
    system: str
    methods: tuple[str, ...] = METHODS
    timeout: float | None = None
    """Overrides the system's timeout for calls on this channel."""

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; allowed: {list(METHODS)}")


class Config(Section, frozen=True):
    gateway: Gateway = msgspec.field(default_factory=Gateway)
    systems: dict[str, System] = {}
    channels: dict[str, Channel] = {}

    def __post_init__(self) -> None:
        for name, ch in self.channels.items():
            if ch.system not in self.systems:
                raise ValueError(
                    f"channels.{name}.system: unknown system {ch.system!r}; "
                    f"known: {sorted(self.systems)}"
                )


_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _split(message: str) -> tuple[str, str]:
    """Split msgspec's ``... - at `$.a.b[1]``` into (``a.b[1]``, ``...``)."""
    m = _PATH.search(message)
    if not m:
        return "", message
    return m.group("path").lstrip("."), message[: m.start()]


def _error(*parts: str, message: str) -> ConfigError:
    path = ".".join(p for p in parts if p)
    return ConfigError(f"{path}: {message}" if path else message)


def apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        try:
            node[parts[-1]] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            node[parts[-1]] = value
    return raw


def _named_tables() -> dict[str, Any]:
    """Tables keyed by user-chosen names; msgspec reports their keys only as ``[...]``."""
    return {
        f.name: f.type.__args__[1]
        for f in msgspec.structs.fields(Config)
        if getattr(f.type, "__origin__", None) is dict
    }


def parse(raw: dict[str, Any]) -> Config:
    # Entries of named tables are validated one by one first, so that an error names
    # ``systems.demo`` rather than ``systems[...]``.
    for table, entry_type in _named_tables().items():
        entries = raw.get(table)
        if not isinstance(entries, dict):
            continue
        for name, entry in entries.items():
            try:
                msgspec.convert(entry, entry_type)
            except msgspec.ValidationError as exc:
                path, message = _split(str(exc))
                raise _error(table, name, path, message=message) from None
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        path, message = _split(str(exc))
        raise _error(path, message=message) from None


def load(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read a TOML file (or nothing), apply environment overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return parse(apply_env(raw, os.environ if env is None else env))
