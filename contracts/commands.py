"""What the shared store keeps about commands and idempotency keys (MessagePack on the bus).

A command's status is written by the edge that accepted it (``accepted``, only if nothing is
there yet; not on NATS, where a command without a record is read back from its stream) and
by the adapter executing it (``running`` per attempt, then ``done``,
``failed`` for a 4xx answer, or ``dead`` after the last attempt). The issuer's subject rides
along so any edge can tell who may read it.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Status = Literal["accepted", "running", "done", "failed", "dead"]


class CommandStatus(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    v: int = 1
    id: str
    status: Status
    path: str = ""
    subject: str | None = None
    """The issuer (``identity.subject``); None = an anonymous caller."""
    attempts: int = 0
    result: bytes | None = None
    """The runner's answer as JSON text, when it is JSON (``done``/``failed``)."""
    http_status: int = 0
    error: dict[str, str] | None = None
    """``{"code", "message"}`` of the last failure (``failed``, ``dead``)."""
    updated: float = 0.0

    def public(self) -> dict[str, object]:
        """The JSON of ``GET /api/command/status/{id}``."""
        body: dict[str, object] = {
            "commandId": self.id,
            "status": self.status,
            "attempts": self.attempts,
        }
        if self.path:
            body["path"] = self.path
        if self.result is not None:
            body["result"] = msgspec.Raw(self.result)
        if self.http_status:
            body["httpStatus"] = self.http_status
        if self.error is not None:
            body["error"] = self.error
        return body


class IdempotencyRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The first answer to an ``Idempotency-Key``: replayed for the same key and body."""

    v: int = 1
    fingerprint: str
    """SHA-256 of what the call asked (method, route, body): another body is a 422."""
    status: int = 0
    """0 while the first call is still publishing."""
    body: bytes = b""
    headers: dict[str, str] = {}
    created: float = 0.0
