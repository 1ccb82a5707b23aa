"""``/api/request/full/{channel}/{path}``: a trusted caller (a server-side renderer, a
proxy) supplies the call's ``origin`` and ``auth`` along with its ``payload``, as
``{"origin", "auth", "payload"}`` (GET/DELETE: that JSON in the ``data`` query parameter).

Trusted means: authenticated on the channel (its rules apply to the caller itself) and
holding ``gateway.full_role``; anyone else gets 403. The runner then sees the supplied
identity and origin, not the caller's.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from busgate.contracts import errors
from busgate.contracts.errors import Remote
from busgate.contracts.wire import Identity, Origin
from busgate.edge import envelope, formats, keys
from busgate.edge.responses import from_reply

ROUTE = r"/api/request/full/{channel}/{path:[\s\S]*}"


class Supplied(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    origin: Origin | None = None
    auth: Identity | None = None
    payload: msgspec.Raw = msgspec.Raw(b"{}")


_decode = msgspec.json.Decoder(Supplied).decode


def _supplied(raw: bytes) -> Supplied:
    try:
        return _decode(raw)
    except msgspec.DecodeError as exc:
        raise errors.BadRequest(f"expected {{origin, auth, payload}}: {exc}") from None


async def handle_full(request: web.Request) -> web.StreamResponse:
    app = request.app
    role = app[keys.CONFIG].gateway.full_role
    caller = request.get(keys.IDENTITY)
    if caller is None or role not in caller.roles:
        raise errors.Forbidden(f"supplying origin and auth needs the role {role!r}")
    fmt = formats.wanted(request)
    req = await envelope.build(request, app[keys.LIVE].config, "request")
    if request.method in ("GET", "DELETE"):
        data = request.query.get("data")
        if data is None:
            raise errors.BadRequest("expected the call as JSON in the 'data' query parameter")
        supplied = _supplied(data.encode())
    else:
        supplied = _supplied(req.body)
    changes: dict[str, Any] = {"body": bytes(supplied.payload), "query": {}}
    changes["identity"] = supplied.auth
    if supplied.origin is not None:
        changes["origin"] = supplied.origin
    reply = await app[keys.BUS].request(msgspec.structs.replace(req, **changes))
    if reply.error is not None:
        raise Remote(reply.error)
    return from_reply(reply) if fmt is None else formats.render(reply, fmt)


def install(app: web.Application) -> None:
    """Before the ``/api/request/{channel}/{path}`` routes, which would take ``full`` for a
    channel name."""
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        app.router.add_route(method, ROUTE, handle_full)
