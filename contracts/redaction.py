"""Bodies written where people read them (audit events, call logs): the values of
secret-looking keys of a JSON body replaced, the rest cut to a size. Shared by the edge
(audit) and the adapters (call logs), so both hide the same things."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from busgate.contracts.codec import json_decode, json_encode

SECRET_KEY = re.compile(
    r"pass|secret|token|auth|api.?key|cookie|credential|session|private", re.IGNORECASE
)
HIDDEN = "***"


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: HIDDEN if SECRET_KEY.search(k) else _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def redacted(body: bytes, max_bytes: int) -> bytes:
    """JSON with the values of secret-looking keys (at any depth) replaced; at most
    ``max_bytes`` of it (else ``{"truncated": "…"}``). A body that is not JSON is kept only
    as its length: it cannot be searched for secrets."""
    try:
        data = json_decode(body) if body else None
    except (msgspec.DecodeError, RecursionError):
        return json_encode({"unreadable_bytes": len(body)})
    out = json_encode(_clean(data))
    if len(out) <= max_bytes:
        return out
    return json_encode({"truncated": out[:max_bytes].decode(errors="ignore")})
