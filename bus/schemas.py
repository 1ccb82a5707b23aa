"""The schemas runners contribute to the edges' OpenAPI document, kept in the bus's store
(kind ``schemas``, key = the system): the adapters of a system read its ``schema`` file or
fetch its ``schema_url`` from the runner and put the document here (``adapters.schemas``);
every edge merges what the store holds (``edge.contributed``). Edges and runners never meet:
the store is where they do."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import msgspec

from busgate.bus.store import Store, open_store

if TYPE_CHECKING:
    from busgate.bus.base import Bus

KIND = "schemas"
MAX_DOCUMENT = 1 << 20
"""Largest contributed document, bytes: a bigger one is not shared (an adapter logs it)."""


class BadDocument(ValueError):
    """A contributed document that is not an OpenAPI document."""


def document_of(data: bytes) -> dict[str, Any]:
    """The JSON object of a contributed document (the adapter checks before it shares, the
    edge again before it merges: the store may hold what an older adapter put there)."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise BadDocument(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("paths"), dict):
        raise BadDocument("not an OpenAPI document (a JSON object with paths)")
    return doc


class StoredSchema(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A system's OpenAPI document (JSON, as the runner gave it) and where it came from."""

    v: int = 1
    document: bytes
    source: str = ""
    at: float = 0.0


def schemas(bus: Bus | None) -> Store[StoredSchema]:
    """The store of contributed schemas on ``bus`` (not started)."""
    return open_store(bus, KIND, StoredSchema)
