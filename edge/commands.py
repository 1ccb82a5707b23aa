"""``/api/command``: durable commands, answered 202 only once the broker has them.

``POST /api/command/{path}`` (body = the payload) or ``POST /api/command`` with
``{"path", "payload"}``. Access is ``[commands]``: its token, and roles per path key (``*``,
``prefix/*``, exact; most specific wins, like channel paths -- the same matcher). The
command goes to the bus as a Request of kind ``command`` with a fresh id; the 202 carries
that id and ``Location: /api/command/status/{id}``. The broker's ack comes first: a broker
that cannot take it answers 503, never 202.

``GET /api/command/status/{id}`` reads the status from the shared store. Only the caller
that issued the command (same subject; anonymous for anonymous) or one with
``commands.admin_role`` sees it; to anyone else it does not exist (404).

On NATS the edge writes no ``accepted`` record: the adapter's records (``running`` and
after) are in the store, and a command with none yet is read back from the command stream,
which holds it from the ack on (``bus.commands.finds_published``). That store write was the
main cost of a command (measured in-process, 64 in flight: publish 3,666/s, publish +
``accepted`` 1,207/s). The edge then reads the store on demand, without a local view: with
one, every status write of the fleet would land on every edge. On Kafka, which has no
lookup by key, the edge records ``accepted`` and reads its view as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator

import msgspec
from aiohttp import web

from busgate.bus import parse_url
from busgate.bus.commands import accepted, command_request, find_published, finds_published
from busgate.bus.commands import publish as publish_command
from busgate.bus.store import Store, open_store
from busgate.contracts import errors
from busgate.contracts.codec import json_encode
from busgate.contracts.commands import CommandStatus
from busgate.contracts.config import Channel, Commands, Config, PathRule
from busgate.contracts.wire import Identity, Request
from busgate.edge import keys
from busgate.edge.access import ChannelAccess
from busgate.edge.caller import identify, require, www_authenticate
from busgate.edge.envelope import origin_of, read_body
from busgate.edge.headers import checked
from busgate.edge.idempotency import HEADER as IDEMPOTENCY_KEY
from busgate.edge.idempotency import fingerprint
from busgate.edge.observe import publishing, traced
from busgate.edge.responses import JSON

log = logging.getLogger("busgate.edge.commands")

ROUTE = "/api/command/{path:.+}"
STATUS_ROUTE = "/api/command/status/{id}"
_BAD_SEGMENTS = frozenset({".", ".."})
_COMMAND_ID = re.compile(r"[0-9a-f]{32}")
VIEW_WAIT = 0.5
"""Seconds a status read waits for a command it does not know yet (see ``_lookup``)."""


class _Wrapped(msgspec.Struct):
    """The body of ``POST /api/command``."""

    path: str
    payload: msgspec.Raw = msgspec.Raw(b"null")


_wrapped = msgspec.json.Decoder(_Wrapped)


def access_of(commands: Commands) -> ChannelAccess:
    """``[commands.paths]`` as channel path rules (POST only), to reuse their matcher."""
    channel = Channel(
        system=commands.system,
        auth=commands.token,
        paths={
            key: PathRule(public=rule.public, disabled=rule.disabled, roles={"POST": rule.roles})
            for key, rule in commands.paths.items()
        },
    )
    return ChannelAccess(channel)


class CommandApi:
    def __init__(self, config: Config, commands: Commands) -> None:
        self.config = config
        self.commands = commands
        self.access = access_of(commands)
        self.bus_kind = parse_url(config.gateway.bus)[0]
        """``nats`` or ``kafka``: the messaging system of the command spans."""
        self.status: Store[CommandStatus] | None = None
        self.records_accepted = True
        """False where the bus finds a published command itself (NATS; see above)."""

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        """The command statuses in the shared store, once the bus is up."""
        retention = self.commands.retention
        bus = app[keys.BUS]
        self.records_accepted = not finds_published(bus)
        self.status = open_store(
            bus, "commands", CommandStatus, max_age=retention, view=self.records_accepted
        )
        await self.status.start()
        yield
        await self.status.close()

    async def issue(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info.get("path")
        gateway = self.config.gateway
        if path is None:  # POST /api/command: {"path", "payload"}
            raw = await read_body(request, gateway.max_body)
            try:
                wrapped = _wrapped.decode(raw)
            except msgspec.DecodeError as exc:
                raise errors.BadRequest(f'expected {{"path", "payload"}}: {exc}') from None
            path, body = wrapped.path.strip("/"), bytes(wrapped.payload)
            if not path:
                raise errors.BadRequest("path must not be empty")
            self._check_path(path)
            identity = await self._authorize(request, path)
        else:
            self._check_path(path)
            identity = await self._authorize(request, path)
            body = await read_body(request, gateway.max_body)
        # Only a keyed call is compared with an earlier one (a SHA-256 of the body, else wasted).
        asked = fingerprint("command", path, body) if IDEMPOTENCY_KEY in request.headers else ""

        if not asked:  # no key: nothing to claim, and two coroutine frames fewer per call
            return await self._publish(request, path, body, identity, None)

        async def publish(slot: str | None) -> web.Response:
            return await self._publish(request, path, body, identity, slot)

        idempotency = request.app[keys.IDEMPOTENCY]
        return await idempotency.run(request, "command", identity, asked, publish)

    def _check_path(self, path: str) -> None:
        if not _BAD_SEGMENTS.isdisjoint(path.split("/")):
            raise errors.BadRequest("'.' and '..' are not allowed as path segments")

    async def _authorize(self, request: web.Request, path: str) -> Identity | None:
        need = self.access.need(path, "POST")
        if need.disabled:
            raise errors.NotFound(f"no command {path!r}")
        identity = await identify(request, self.commands.token)
        if need.public:
            return identity
        return require(identity, need.roles)

    async def _publish(
        self,
        request: web.Request,
        path: str,
        body: bytes,
        identity: Identity | None,
        slot: str | None,
    ) -> web.Response:
        gateway = self.config.gateway
        forwarded = {
            name: checked(name, value)
            for name in gateway.forward_headers
            if (value := request.headers.get(name)) is not None
        }
        command = command_request(
            self.commands.system,
            path,
            body,
            traceparent=request[keys.TRACEPARENT],
            headers=forwarded,
            identity=identity,
            origin=origin_of(request),
        )
        bus = request.app[keys.BUS]
        if not traced(request):
            await publish_command(bus, command, msg_id=slot)
        else:
            system = command.system
            with publishing(
                request,
                self.bus_kind,
                bus.names.command(system),
                command.id,
                {
                    "busgate.kind": "command",
                    "busgate.system": system,
                    "busgate.command_id": command.id,
                },
            ) as traceparent:  # the adapter's execution links to it
                if traceparent != command.traceparent:
                    command = msgspec.structs.replace(command, traceparent=traceparent)
                await publish_command(bus, command, msg_id=slot)
        if self.records_accepted:
            await self._accepted(command)
        return web.Response(
            status=202,
            body=json_encode({"commandId": command.id, "status": "accepted"}),
            # as headers, not content_type=: aiohttp would parse the type again per response
            headers={"Content-Type": JSON, "Location": f"/api/command/status/{command.id}"},
        )

    async def _accepted(self, command: Request) -> None:
        """Record ``accepted`` unless the adapter already wrote a later state."""
        assert self.status is not None
        try:
            await self.status.create(command.id, accepted(command), ttl=self.commands.retention)
        except errors.BusUnavailable as exc:
            log.warning("command %s accepted; its status not stored: %s", command.id, exc)

    async def read_status(self, request: web.Request) -> web.StreamResponse:
        assert self.status is not None
        command_id = request.match_info["id"]
        identity = await identify(request, self.commands.token)
        record = await self._lookup(request, command_id)
        admin = identity is not None and self.commands.admin_role in identity.roles
        caller = identity.subject if identity is not None else None
        if record is None or (record.subject != caller and not admin):
            raise errors.NotFound(f"no command {command_id!r}")
        return web.Response(body=json_encode(record.public()), content_type=JSON)

    async def _lookup(self, request: web.Request, command_id: str) -> CommandStatus | None:
        """The status: the store's record, else (NATS) ``accepted`` if the command stream
        has the command -- both are read from the server, so any edge sees a command as soon
        as one answered 202. On Kafka a command accepted by another edge a moment ago may not
        have reached this node's view yet (Kafka reads the view), so wait for it briefly."""
        assert self.status is not None
        if not _COMMAND_ID.fullmatch(command_id):
            return None
        entry = await self.status.get(command_id)
        if entry is not None:
            return entry.value
        if not self.records_accepted:
            command = await find_published(
                request.app[keys.BUS],
                self.commands.system,
                command_id,
                max_age=self.commands.retention,
            )
            return accepted(command) if command is not None else None
        status = self.status
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(VIEW_WAIT):
                await status.wait_until(lambda: status.local(command_id) is not None)
        return status.value(command_id)


def install(app: web.Application, config: Config) -> None:
    commands = config.commands
    if commands is None:
        return
    api = CommandApi(config, commands)
    app.cleanup_ctx.append(api.ctx)
    app.router.add_get(STATUS_ROUTE, www_authenticate(api.read_status))
    app.router.add_post("/api/command", www_authenticate(api.issue))
    app.router.add_post("/api/command/", www_authenticate(api.issue))
    app.router.add_post(ROUTE, www_authenticate(api.issue))
