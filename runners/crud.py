"""The shipped CRUD runner: JSON documents per state on SQLite or PostgreSQL over HTTP.

``busgate runner crud --db URL`` serves ``/api/{runner}/{state}[/{id}]``:

- ``GET STATE`` lists (query = equality filter on top-level fields, ``limit`` ≤ 1000,
  default 100, ``offset``): ``{"items", "total", "limit", "offset"}``.
- ``POST STATE`` creates (id from the body's ``id``, else generated), ``POST STATE/ID``
  creates with that id: 201, or 409 when it exists.
- ``GET STATE/ID`` reads; ``PUT`` replaces; ``PATCH`` merges (JSON Merge Patch, RFC 7386:
  ``null`` removes a field); ``DELETE`` deletes (204). 404 for a missing id.

Every document has a version, sent as its ``ETag`` (``"3"``); a write with ``If-Match``
happens only at that version, else 412, so two writers that read the same version cannot
silently overwrite each other. Errors are ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from typing import Any

import msgspec
from aiohttp import web

from busgate.runners.crud_store import (
    FIELD,
    NAME,
    Doc,
    Exists,
    Invalid,
    Missing,
    Store,
    VersionMismatch,
    open_store,
)

STORE = web.AppKey("store", Store)
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
PATCH_ATTEMPTS = 20
"""Read-merge-write rounds a PATCH without ``If-Match`` tries when other writers keep
moving the version under it (with a growing random pause, so that n writers of one document
do not take n rounds each), before answering 409."""
_ID_MAX = 200
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
log = logging.getLogger("busgate.runner.crud")


class Refused(Exception):
    """A client error: status, code and message for the JSON answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _json(data: Any, status: int = 200, version: int | None = None) -> web.Response:
    response = web.Response(body=_encode(data), status=status, content_type="application/json")
    if version is not None:
        response.headers["ETag"] = f'"{version}"'
    return response


def _error(exc: Refused) -> web.Response:
    body = {"error": {"code": exc.code, "message": exc.message}}
    return _json(body, exc.status)


def _state(request: web.Request) -> str:
    state = request.match_info["state"]
    if not NAME.match(state):
        raise Refused(400, "bad_state", "a state is a letter then letters, digits or _ (≤ 48)")
    return state


def _id(raw: str) -> str:
    if not raw or len(raw) > _ID_MAX or "/" in raw:
        raise Refused(400, "bad_id", f"an id is 1 to {_ID_MAX} characters without '/'")
    return raw


async def _document(request: web.Request) -> Doc:
    raw = await request.read()
    try:
        doc = _decode(raw) if raw else None
    except msgspec.DecodeError:
        raise Refused(400, "bad_body", "the body is not JSON") from None
    if not isinstance(doc, dict):
        raise Refused(400, "bad_body", "the body must be a JSON object")
    return doc


def expected_version(request: web.Request) -> int | None:
    """The version ``If-Match`` names (None without one; ``*`` = any existing). A value that
    is no version of ours can never match: -1."""
    value = request.headers.get("If-Match")
    if value is None or value.strip() == "*":
        return None
    tag = value.split(",")[0].strip().removeprefix("W/").strip('"')
    return int(tag) if tag.isdigit() else -1


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON Merge Patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _paging(query: Any) -> tuple[dict[str, str], int, int]:
    where: dict[str, str] = {}
    limit, offset = DEFAULT_LIMIT, 0
    for key, value in query.items():
        if key in ("limit", "offset"):
            if not value.isdigit():
                raise Refused(400, "bad_query", f"{key} must be a non-negative integer")
            if key == "limit":
                limit = min(int(value), MAX_LIMIT)
            else:
                offset = int(value)
        elif not FIELD.match(key):
            raise Refused(400, "bad_query", f"cannot filter on {key!r}")
        else:
            where[key] = value
    return where, limit, offset


async def collection(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        state = _state(request)
        if request.method == "GET":
            where, limit, offset = _paging(request.query)
            items, total = await store.list(state, where, limit, offset)
            return _json({"items": items, "total": total, "limit": limit, "offset": offset})
        if request.method == "POST":
            doc = await _document(request)
            given = doc.get("id")
            id_ = _id(str(given)) if given not in (None, "") else uuid.uuid4().hex
            return await _create(store, state, id_, doc)
        raise Refused(405, "method_not_allowed", f"{request.method} needs an id: STATE/ID")
    except Invalid as exc:
        return _error(Refused(400, "bad_value", f"the database refuses a value: {exc}"))
    except Refused as exc:
        return _error(exc)


async def _create(store: Store, state: str, id_: str, doc: Doc) -> web.Response:
    doc = {**doc, "id": id_}
    try:
        await store.insert(state, id_, doc)
    except Exists:
        raise Refused(409, "conflict", f"{state}/{id_} exists already") from None
    return _json(doc, 201, version=1)


async def document(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        state = _state(request)
        id_ = _id(request.match_info["id"])
        match request.method:
            case "GET":
                doc, version = await store.get(state, id_)
                return _json(doc, version=version)
            case "POST":
                body = await _document(request)
                if body.get("id") not in (None, id_):
                    raise Refused(400, "bad_id", "the body's id differs from the path's")
                return await _create(store, state, id_, body)
            case "PUT":
                body = await _document(request)
                if body.get("id") not in (None, id_):
                    raise Refused(400, "bad_id", "the body's id differs from the path's")
                doc = {**body, "id": id_}
                version = await store.update(state, id_, doc, expected_version(request))
                return _json(doc, version=version)
            case "PATCH":
                return await _patch(store, state, id_, request)
            case "DELETE":
                await store.delete(state, id_, expected_version(request))
                return web.Response(status=204)
        raise Refused(405, "method_not_allowed", f"{request.method} is not a CRUD method")
    except Missing:
        return _error(Refused(404, "not_found", f"no {request.match_info['state']} with that id"))
    except VersionMismatch:
        return _error(Refused(412, "precondition_failed", "the document changed: read it again"))
    except Invalid as exc:
        return _error(Refused(400, "bad_value", f"the database refuses a value: {exc}"))
    except Refused as exc:
        return _error(exc)


async def _patch(store: Store, state: str, id_: str, request: web.Request) -> web.Response:
    patch = await _document(request)
    if patch.get("id") not in (None, id_):
        raise Refused(400, "bad_id", "the id cannot be changed")
    wanted = expected_version(request)
    for attempt in range(PATCH_ATTEMPTS):
        if attempt:
            await asyncio.sleep(random.uniform(0, 0.002 * attempt))
        doc, version = await store.get(state, id_)
        if wanted is not None and version != wanted:
            raise VersionMismatch(id_)
        merged = {**merge_patch(doc, patch), "id": id_}
        try:
            new = await store.update(state, id_, merged, version)
        except VersionMismatch:
            if wanted is not None:
                raise
            continue  # another writer came between our read and write: merge on theirs
        return _json(merged, version=new)
    raise Refused(409, "conflict", "the document kept changing; try again")


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


def create_app(db: str) -> web.Application:
    app = web.Application()

    async def storage(app: web.Application) -> Any:
        store = open_store(db)
        await store.open()
        app[STORE] = store
        yield
        await store.close()

    app.cleanup_ctx.append(storage)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/api/{runner}/{state}", collection)
    app.router.add_route("*", "/api/{runner}/{state}/{id}", document)
    return app


def run(listen: str, db: str) -> None:
    host, _, port = listen.rpartition(":")
    web.run_app(
        create_app(db),
        host=host or "127.0.0.1",
        port=int(port),
        access_log=None,
        print=None,
    )
