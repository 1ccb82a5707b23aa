"""Audit of the paths that ask for it (``audit = true``): one AuditEvent per call, published
on the bus (``bus.naming.Names.audit``) after the answer is ready, so the caller never waits
for it; refusals (401, 403, 404 of a disabled path) are audited too.

What an event holds is listed in ``contracts.wire.AuditEvent``: never a header, a token or a
cookie; the body only with ``audit_body``, with the values of secret-looking keys of a JSON
object replaced by ``"***"`` and at most :data:`MAX_BODY` bytes kept. An event the bus cannot
take is counted and logged (rate-limited), never the caller's failure.
"""

from __future__ import annotations

import asyncio
import time
from http import HTTPStatus

from aiohttp import web
from aiohttp.typedefs import Handler

from busgate.bus import headers as hdr
from busgate.bus.outbox import Outbox
from busgate.contracts import errors
from busgate.contracts.codec import encode, json_encode
from busgate.contracts.config import Config
from busgate.contracts.redaction import redacted as redact
from busgate.contracts.wire import AuditEvent
from busgate.edge import keys
from busgate.edge.headers import readable
from busgate.edge.path_table import PathTable

MAX_BODY = 16 * 1024
"""Bytes of a body an audit event keeps (``audit_body``); the rest is cut."""


def redacted(body: bytes) -> bytes:
    return redact(body, MAX_BODY)


def _status_code(status: int) -> str:
    try:
        return HTTPStatus(status).name.lower()
    except ValueError:
        return str(status)


class Audit:
    def __init__(self, config: Config) -> None:
        self.node = config.gateway.id
        self.channels: dict[str, PathTable[tuple[bool, bool]]] = {}
        for name, channel in config.channels.items():
            table = PathTable(
                (key, (rule.audit, rule.audit_body))
                for key, rule in channel.paths.items()
                if rule.audit or rule.audit_body
            )
            if table:
                self.channels[name] = table
        self.outbox = Outbox("audit events")

    def __bool__(self) -> bool:
        return bool(self.channels)

    def middleware(self) -> web.middleware:  # type: ignore[valid-type]
        channels = self.channels

        @web.middleware
        async def audit(request: web.Request, handler: Handler) -> web.StreamResponse:
            info = request.match_info
            table = channels.get(info.get("channel", ""))
            if table is None:
                return await handler(request)
            found = table.lookup(info.get("path", ""))
            if found is None or not found[0]:
                return await handler(request)
            started, clock = time.time(), time.perf_counter()
            status, code = 500, "internal"
            try:
                response = await handler(request)
                status, code = response.status, ""
                if status >= 400:  # a refusal answered, not raised (401 from the auth check)
                    code = _status_code(status)
                return response
            except errors.BusgateError as exc:
                status, code = exc.status, exc.code
                raise
            except web.HTTPException as exc:
                status, code = exc.status, exc.reason.lower().replace(" ", "_")
                raise
            except asyncio.CancelledError:
                status, code = 499, "client_closed"  # nginx's number for it
                found = (True, False)  # no body read for a caller that is gone
                raise
            finally:
                body = await self._body(request) if found[1] else None
                self._publish(request, started, clock, status, code, body)

        return audit

    async def _body(self, request: web.Request) -> bytes | None:
        if request.method in ("GET", "DELETE") or not request.body_exists:
            return redacted(json_encode(dict(request.query))) if request.query else None
        try:
            return redacted(await request.read())  # read already: aiohttp keeps it
        except Exception:
            return None

    def _publish(
        self,
        request: web.Request,
        started: float,
        clock: float,
        status: int,
        code: str,
        body: bytes | None,
    ) -> None:
        info = request.match_info
        identity = request.get(keys.IDENTITY)
        alias = request.get(keys.ALIAS)
        channel = info.get("channel", "")
        event = AuditEvent(
            at=started,
            request_id=request.get(keys.REQUEST_ID, ""),
            trace_id=request.get(keys.TRACE_ID, ""),
            node=self.node,
            channel=channel,
            path=info.get("path", ""),
            target=alias.target if alias is not None else "",
            method=request.method,
            status=status,
            error=code,
            duration_ms=round((time.perf_counter() - clock) * 1000, 3),
            subject=identity.subject if identity is not None else "",
            roles=identity.roles if identity is not None else (),
            client_ip=request.remote or "",
            user_agent=readable(request.headers.get("User-Agent", "")),
            forwarded_for=readable(request.headers.get("X-Forwarded-For", "")),
            body=body,
        )
        bus = request.app[keys.BUS]
        dest = bus.audit_address(channel)
        headers = {hdr.REQUEST_ID: event.request_id, hdr.KIND: "audit"}
        self.outbox.send(bus, dest, encode(event), headers)

    async def drain(self, app: web.Application) -> None:
        """On shutdown: the events of the last calls still go out, before the bus closes."""
        await self.outbox.drain()


def install(app: web.Application, config: Config) -> None:
    """After the front middleware, before the security ones: refusals are audited too."""
    audit = Audit(config)
    if not audit:
        return
    app[keys.AUDIT] = audit
    app.middlewares.append(audit.middleware())
    app.on_shutdown.append(audit.drain)
