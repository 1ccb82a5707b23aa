"""``X-Async`` calls: nobody waits for the runner's answer.

``gateway``: the edge answered 202 once the request was on the bus and left no reply
address. ``backend``: the edge waits for this adapter to take the request, so the adapter
replies 202 at once and only then calls the runner. Either way the runner's answer is
logged and dropped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from busgate.bus.base import Responder
from busgate.contracts.codec import json_encode
from busgate.contracts.errors import BusgateError
from busgate.contracts.wire import Reply, Request

if TYPE_CHECKING:
    from busgate.adapters.service import SystemClient

log = logging.getLogger("busgate.adapter.detached")


async def detached(req: Request, responder: Responder, client: SystemClient | None) -> None:
    if req.detach == "backend" and req.reply_to:
        await responder.reply(
            Reply(
                id=req.id,
                status=202,
                headers={"content-type": "application/json"},
                body=json_encode({"requestId": req.id}),
            )
        )
    if client is None:
        log.warning("async request %s: no system %r on this adapter", req.id, req.system)
        return
    try:
        reply = await client.call(req)
    except BusgateError as exc:
        log.warning("async request %s failed: %s %s", req.id, exc.code, exc.message)
        return
    log.info("async request %s answered %d (dropped)", req.id, reply.status)
