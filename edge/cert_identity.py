"""The identity of a caller that presented a verified client certificate (mTLS).

OpenSSL verified the certificate during the handshake (``[gateway.tls] client_auth``);
``getpeercert()`` returns it only then. It is an identity like a token's: the same access
rules apply, and runners see it in ``meta.identity`` (``claims.amr = ["mtls"]``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from busgate.contracts.config import TlsIdentity
from busgate.contracts.wire import Identity

_CLAIMS = {"amr": ["mtls"]}


def subject_of(peercert: dict[str, Any], source: str) -> str | None:
    """The CN of the certificate's subject, or its first URI SAN."""
    if source == "uri":
        for kind, value in peercert.get("subjectAltName", ()):
            if kind == "URI":
                return str(value)
        return None
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


class CertIdentities:
    """Identities from client certificates, per ``[gateway.tls.identity]``."""

    def __init__(self, config: TlsIdentity) -> None:
        self.config = config
        self.roles = {subject: tuple(roles) for subject, roles in config.roles.items()}

    def of(self, request: web.Request) -> Identity | None:
        transport = request.transport
        if transport is None:
            return None
        peercert = transport.get_extra_info("peercert")
        if not peercert:  # no certificate (or plain HTTP)
            return None
        subject = subject_of(peercert, self.config.subject)
        if not subject:
            return None
        roles = self.roles.get(subject, self.config.default_roles)
        return Identity(subject=subject, roles=roles, claims=_CLAIMS)
