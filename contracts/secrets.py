"""Secrets named in config: a literal, ``env:NAME`` or ``file:PATH`` (the last two keep them
out of the file). In ``contracts`` because the edge (token keys) and the adapters (runner
client secrets) both read them, and neither may import the other."""

from __future__ import annotations

import os
from pathlib import Path

from busgate.contracts.config import ConfigError


def resolve_secret(value: str, where: str) -> str:
    """The secret ``value`` names; ConfigError (naming ``where``) when it cannot be read."""
    if value.startswith("env:"):
        name = value[4:]
        found = os.environ.get(name)
        if not found:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return found
    if value.startswith("file:"):
        path = Path(value[5:]).expanduser()
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    return value
