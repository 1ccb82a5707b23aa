"""``POST /api/send/{service}/{topic}/{key}`` and ``…/{topic}/mod/{mod}/{key}``: an ad hoc
message to a topic of ``[services.NAME]``, answered 202 with where it landed once the broker
acknowledged it.

The body goes as it came (any content type, up to the service's ``max_body``); its content
type, the request id and ``traceparent`` go along as message headers. With ``mod`` the
partition is the integer key modulo ``mod``. Unknown service 404; a topic none of the
service's globs allows 403; broker unreachable 503; a message the broker refuses as too
large 413.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from busgate.bus import headers as hdr
from busgate.bus.producers import KafkaProducer, Producer, allows, producer_for
from busgate.contracts import errors
from busgate.contracts.codec import json_encode
from busgate.contracts.config import Config
from busgate.edge import keys
from busgate.edge.caller import identify, require, www_authenticate
from busgate.edge.idempotency import fingerprint
from busgate.edge.observe import publishing
from busgate.edge.responses import JSON

log = logging.getLogger("busgate.edge.send")

ROUTE = "/api/send/{service}/{topic}/{rest:.+}"


def target(rest: str) -> tuple[str, int | None]:
    """``KEY`` or ``mod/MOD/KEY`` → (key, partition)."""
    parts = rest.split("/")
    if len(parts) == 1:
        return parts[0], None
    if len(parts) == 3 and parts[0] == "mod":
        try:
            mod, number = int(parts[1]), int(parts[2])
        except ValueError:
            raise errors.BadRequest("with mod, the key and mod must be integers") from None
        if mod <= 0:
            raise errors.BadRequest("mod must be a positive integer")
        return parts[2], number % mod
    raise errors.NotFound("use /api/send/SERVICE/TOPIC/KEY or …/TOPIC/mod/MOD/KEY")


class SendApi:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.producers: dict[str, Producer] = {}
        self.started: set[str] = set()

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        """One producer per service; a broker down at start-up is retried on first use."""
        for name, service in self.config.senders.items():
            self.producers[name] = producer_for(service, self.config.gateway.bus)
        for name, producer in self.producers.items():
            try:
                await producer.start()
                self.started.add(name)
            except errors.BusUnavailable as exc:
                log.warning("service %s: %s; sends answer 503 until it is back", name, exc)
        yield
        for name in self.started:
            await self.producers[name].close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        name, topic = info["service"], info["topic"]
        service = self.config.senders.get(name)
        if service is None:
            raise errors.NotFound(f"unknown service {name!r}")
        identity = await identify(request, service.token)
        if service.token is not None:
            roles = frozenset(r for r in service.roles if r != "*") or None
            require(identity, roles)
        if not allows(service, topic):
            raise errors.Forbidden(f"service {name!r} may not send to topic {topic!r}")
        key, partition = target(info["rest"])
        limit = service.max_body or self.config.gateway.max_body
        if request.content_length is not None and request.content_length > limit:
            raise errors.PayloadTooLarge(
                f"message of {request.content_length} bytes exceeds {limit}"
            )
        body = await request.read()
        if len(body) > limit:
            raise errors.PayloadTooLarge(f"message exceeds {limit} bytes")
        producer = self.producers[name]
        if name not in self.started:
            await producer.start()  # raises BusUnavailable while the broker is still away
            self.started.add(name)
        headers = {hdr.REQUEST_ID: request[keys.REQUEST_ID]}
        if request.content_type:
            headers["content-type"] = request.content_type
        system = "kafka" if isinstance(producer, KafkaProducer) else "nats"

        async def publish(slot: str | None) -> web.Response:
            if slot is not None:
                headers["Nats-Msg-Id"] = slot
            attributes = {"busgate.kind": "message", "busgate.service": name}
            with publishing(request, system, topic, request[keys.REQUEST_ID], attributes) as tp:
                if tp:
                    headers[hdr.TRACEPARENT] = tp
                landed = await producer.send(topic, key, partition, body, headers)
            return web.Response(status=202, body=json_encode(landed), content_type=JSON)

        asked = fingerprint("send", name, topic, info["rest"], body)
        idempotency = request.app[keys.IDEMPOTENCY]
        return await idempotency.run(request, f"send.{name}", identity, asked, publish)


def install(app: web.Application, config: Config) -> None:
    if not config.senders:
        return
    api = SendApi(config)
    app.cleanup_ctx.append(api.ctx)
    app.router.add_post(ROUTE, www_authenticate(api.handle))
