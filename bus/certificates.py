"""Server certificates kept in the bus's store (kind ``certificates``), so that every edge of
a fleet picks up a certificate pushed once (``busgate cert push``) -- no file distribution.

The private key travels with its certificate: whoever may read this store may serve as the
gateway, so give the bucket / topic the access rules of a secret.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

from busgate.bus.store import Store, open_store

if TYPE_CHECKING:
    from busgate.bus.base import Bus

KIND = "certificates"


class StoredCert(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A certificate chain (PEM, leaf first) and its key, as stored on the bus."""

    v: int = 1
    cert_pem: bytes
    key_pem: bytes
    pushed_at: float = 0.0


def certificates(bus: Bus | None) -> Store[StoredCert]:
    """The store of certificates on ``bus`` (not started)."""
    return open_store(bus, KIND, StoredCert)


async def push(bus: Bus, name: str, cert_pem: bytes, key_pem: bytes) -> int:
    """Store ``name``'s certificate for every edge; returns the store revision."""
    store = certificates(bus)
    await store.start()
    try:
        value = StoredCert(cert_pem=cert_pem, key_pem=key_pem, pushed_at=time.time())
        return await store.put(name, value)
    finally:
        await store.close()
