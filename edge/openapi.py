"""``GET /api/openapi.json``: an OpenAPI 3.1 document of the API this node serves, generated
from its live config (so a refresh changes it), and ``GET /api/docs``: Swagger UI rendering
it, its assets served by the edge from the ``swagger-ui-py`` wheel (no CDN).

Per channel: each exact path of ``[channels.NAME.paths]`` (not disabled), each ``prefix/*``
and the channel's catch-all, with the channel's methods, the roles a path needs
(``x-busgate-roles`` and in the description) and its security (bearer, API key, cookie of
the channel's token; none when public); SSE twins under ``/api/stream`` as
``text/event-stream``; the auth, command, send, file and control endpoints when present; one error
schema for every error answer, as the path's error detail shows it (``code``: no message;
``none``: no body); the schemas runners contribute merged in (``edge.contributed``). Built
once per config and set of contributions, and cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from busgate.bus.schemas import StoredSchema, schemas
from busgate.bus.store import Change, Store
from busgate.contracts import errors
from busgate.contracts.codec import json_encode
from busgate.contracts.config import Channel, Config, ErrorDetail
from busgate.edge import keys
from busgate.edge.access import ChannelAccess, Need
from busgate.edge.contributed import merge
from busgate.edge.path_table import PathTable

log = logging.getLogger("busgate.edge.openapi")

ERROR = {"$ref": "#/components/schemas/Error"}
ERROR_CODE = {"$ref": "#/components/schemas/ErrorCode"}
ANY_JSON: dict[str, Any] = {}
"""The JSON Schema that accepts any value (runners define their own bodies)."""
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
"""One server-sent event (OpenAPI 3.1: a stream's ``schema`` describes each event)."""
ERRORS = {
    "400": "The request is malformed",
    "401": "A token is needed, or it is not valid",
    "403": "The caller lacks a role this path needs",
    "404": "No such channel or path",
    "406": "The Accept header names no format the gateway answers in",
    "413": "The body is larger than the gateway accepts",
    "429": "Too many calls",
    "409": "A file and a folder of the same name",
    "416": "The range lies outside the file",
    "502": "The runner failed",
    "503": "No adapter serves the system, or the bus is down",
    "504": "The runner did not answer before the deadline",
}
_SAFE = re.compile(r"[^A-Za-z0-9_]+")


def _error_responses(*codes: str, level: ErrorDetail = "full") -> dict[str, Any]:
    """The error answers as ``level`` (``edge.error_detail``) shows them to callers."""
    if level == "none":
        return {code: {"description": ERRORS[code] + " (no body)"} for code in codes}
    schema = ERROR if level == "full" else ERROR_CODE
    return {
        code: {"description": ERRORS[code], "content": {"application/json": {"schema": schema}}}
        for code in codes
    }


def _error_level(channel: Channel, probe: str) -> ErrorDetail:
    """The error detail of the path a rule lookup sees (the channel's for its catch-all)."""
    paths = PathTable((key, rule.errors) for key, rule in channel.paths.items() if rule.errors)
    return paths.lookup(probe) or channel.errors


def _security(config: Config, token: str | None, need: Need) -> list[dict[str, list[str]]]:
    if token is None or need.public:
        return []
    t = config.tokens[token]
    schemes: list[dict[str, list[str]]] = [{token: []}, {f"{token}_cookie": []}]
    if t.api_key_header:
        schemes.insert(1, {f"{token}_api_key": []})
    return schemes


def _schemes(config: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, token in config.tokens.items():
        out[name] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        out[f"{name}_cookie"] = {"type": "apiKey", "in": "cookie", "name": token.cookies.access}
        if token.api_key_header:
            out[f"{name}_api_key"] = {
                "type": "apiKey",
                "in": "header",
                "name": token.api_key_header,
            }
    return out


def _paths_of(channel: Channel) -> list[tuple[str, str]]:
    """(URL suffix, the path a rule lookup sees) for each documented path of ``channel``."""
    out: list[tuple[str, str]] = []
    for key, rule in channel.paths.items():
        if rule.disabled or key == "*":
            continue
        if key.endswith("/*"):
            prefix = key[:-2].strip("/")
            out.append((f"{prefix}/{{path}}", f"{prefix}/x"))
        else:
            out.append((key.strip("/"), key.strip("/")))
    out.append(("{path}", "\0"))  # the catch-all: what no key matches
    return out


def _operation(
    config: Config,
    kind: str,
    name: str,
    channel: Channel,
    suffix: str,
    need: Need,
    method: str,
    level: ErrorDetail = "full",
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": _SAFE.sub("_", f"{kind}_{name}_{suffix}_{method}").strip("_").lower(),
        "tags": [name],
        "summary": f"{method} {suffix} on channel {name} (system {channel.system})",
        "security": _security(config, channel.auth, need),
    }
    if need.roles:
        op["x-busgate-roles"] = sorted(need.roles)
        op["description"] = f"Needs one of the roles {sorted(need.roles)}."
    params = []
    if "{path}" in suffix:
        params.append(
            {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
        )
    if method in ("GET", "DELETE") or kind == "stream":
        params.append(
            {
                "name": "payload",
                "in": "query",
                "description": "The payload, one query parameter per key",
                "schema": {"type": "object", "additionalProperties": {"type": "string"}},
                "style": "form",
                "explode": True,
            }
        )
    if params:
        op["parameters"] = params
    if method in ("POST", "PUT", "PATCH"):
        op["requestBody"] = {"content": {"application/json": {"schema": ANY_JSON}}}
    if kind == "stream":
        ok = {
            "description": "One event per item of each saga step; `event: end` at the end",
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
        }
    else:
        ok = {
            "description": "The runner's answer (other formats converted at the edge: "
            "Accept or a .xml/.html/.txt/.csv extension)",
            "content": {
                media: {"schema": ANY_JSON if media == "application/json" else {"type": "string"}}
                for media in ("application/json", "application/xml", "text/html", "text/csv")
            }
            | {"text/plain": {"schema": {"type": "string"}}},
        }
    codes = ["400", "404", "413", "429", "502", "503", "504"]
    if kind == "request":
        codes.insert(2, "406")
    if channel.auth is not None and not need.public:
        codes[1:1] = ["401", "403"]
    responses = {"200": ok, **_error_responses(*codes, level=level)}
    if kind == "request" and level != "none":
        # A runner's own answer passes on with its status and body (schemathesis found its
        # {"error": "no saga …"} 404s contradicting a gateway-only schema).
        gateway = ERROR if level == "full" else ERROR_CODE
        for code in ("400", "404"):
            responses[code] = {
                "description": ERRORS[code] + ", or the runner's own answer",
                "content": {"application/json": {"schema": {"anyOf": [gateway, ANY_JSON]}}},
            }
        responses["default"] = {
            "description": "The runner's own answer, passed on with its status",
            "content": {"application/json": {"schema": ANY_JSON}},
        }
    op["responses"] = responses
    return op


def _channel_paths(config: Config) -> dict[str, Any]:
    controllers = config.gateway.controllers
    kinds = [
        k for k, on in (("request", controllers.request), ("stream", controllers.stream)) if on
    ]
    paths: dict[str, Any] = {}
    for name, channel in sorted(config.channels.items()):
        access = ChannelAccess(channel)
        for suffix, probe in _paths_of(channel):
            level = _error_level(channel, probe)
            for kind in kinds:
                item: dict[str, Any] = {}
                methods = ("GET",) if kind == "stream" else channel.methods
                for method in methods:
                    need = access.need(probe, method) if probe != "\0" else _default(access, method)
                    if need.disabled:
                        continue
                    op = _operation(config, kind, name, channel, suffix, need, method, level)
                    item[method.lower()] = op
                if item:
                    paths[f"/api/{kind}/{name}/{suffix}"] = item
    return paths


def _default(access: ChannelAccess, method: str) -> Need:
    return access.default.get(method) or access.default["*"]


def _simple(
    summary: str, *params: str, body: bool = True, tag: str = "gateway", ok: str = "200"
) -> dict[str, Any]:
    """``ok``: the success status (``202`` for what is accepted, not done: commands and
    tracking events; an authenticated schemathesis run found the undocumented 202)."""
    done = "Accepted" if ok == "202" else "Done"
    op: dict[str, Any] = {
        "summary": summary,
        "operationId": _SAFE.sub("_", summary).strip("_").lower(),
        "tags": [tag],
        "responses": {
            ok: {"description": done, "content": {"application/json": {"schema": ANY_JSON}}},
            **_error_responses("400", "401", "403", "404", *(("413",) if body else ()), "503"),
        },
    }
    if params:
        op["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params
        ]
    if body:
        op["requestBody"] = {"content": {"application/json": {"schema": ANY_JSON}}}
    return op


FILE_ENTRY = {
    "type": "object",
    "required": ["path", "size", "etag"],
    "properties": {
        "path": {"type": "string"},
        "size": {"type": "integer"},
        "etag": {"type": "string"},
        "modified": {"type": ["number", "null"]},
    },
}
_FILE_ERRORS = ("400", "401", "403", "404")
_STORE_DOWN = {
    "description": "The file store is unavailable",
    "content": {"application/json": {"schema": ERROR}},
}


def _file_paths(config: Config) -> dict[str, Any]:
    """``/api/file/NAME`` and ``/api/file/NAME/{path}`` of each file service (edge.files)."""
    paths: dict[str, Any] = {}
    for name, service in config.file_services.items():
        need = Need(public=service.token is None, roles=frozenset(service.roles) or None)
        security = _security(config, service.token, need)
        if security and service.anonymous:
            security.append({})  # callers without a token too
        scope = "the caller's" if service.scope == "user" else "the shared"
        path_param = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
        name_param = {"name": "name", "in": "query", "schema": {"type": "string"}}
        uploaded = {
            "description": "Stored (complete: a failed upload leaves nothing)",
            "content": {"application/json": {"schema": FILE_ENTRY}},
        }
        upload_body = {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                },
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            }
        }
        too_large = {"413": {**_error_responses("413")["413"], "description": "Over max_size"}}
        tag, op = f"file:{name}", _SAFE.sub("_", name)
        common = {"tags": [tag], "security": security}
        paths[f"/api/file/{name}"] = {
            "get": {
                **common,
                "summary": f"List {scope} files",
                "operationId": f"file_{op}_list",
                "responses": {
                    "200": {
                        "description": "The files",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"files": {"type": "array", "items": FILE_ENTRY}},
                                }
                            }
                        },
                    },
                    **_error_responses(*_FILE_ERRORS),
                    "503": _STORE_DOWN,
                },
            },
            "post": {
                **common,
                "summary": "Upload a file (named by ?name= or the form's filename)",
                "operationId": f"file_{op}_upload",
                "parameters": [name_param],
                "requestBody": upload_body,
                "responses": {
                    "201": uploaded,
                    **_error_responses(*_FILE_ERRORS, "409"),
                    **too_large,
                    "503": _STORE_DOWN,
                },
            },
        }
        paths[f"/api/file/{name}/{{path}}"] = {
            "get": {
                **common,
                "summary": "Download a file (Range, If-None-Match, If-Range)",
                "operationId": f"file_{op}_download",
                "parameters": [path_param],
                "responses": {
                    "200": {
                        "description": "The file",
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "206": {
                        "description": "One range of the file",
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "304": {"description": "Not modified (If-None-Match)"},
                    **_error_responses(*_FILE_ERRORS, "416"),
                    "503": _STORE_DOWN,
                },
            },
            "post": {
                **common,
                "summary": "Upload a file to this path",
                "operationId": f"file_{op}_upload_to",
                "parameters": [path_param],
                "requestBody": upload_body,
                "responses": {
                    "201": uploaded,
                    **_error_responses(*_FILE_ERRORS, "409"),
                    **too_large,
                    "503": _STORE_DOWN,
                },
            },
            "delete": {
                **common,
                "summary": "Delete a file",
                "operationId": f"file_{op}_delete",
                "parameters": [path_param],
                "responses": {
                    "204": {"description": "Deleted"},
                    **_error_responses(*_FILE_ERRORS),
                    "503": _STORE_DOWN,
                },
            },
        }
    return paths


def document(
    config: Config, revision: int = 0, contributed: Mapping[str, bytes] | None = None
) -> dict[str, Any]:
    """The document; ``contributed``: the runners' schemas by system (``bus.schemas``)."""
    controllers = config.gateway.controllers
    paths = _channel_paths(config)
    if controllers.track and config.channels:
        paths["/api/track/{channel}/{path}"] = {
            "post": _simple("Send a tracking event (202)", "channel", "path", tag="track", ok="202")
        }
    if controllers.request and config.channels:
        paths["/api/request/full/{channel}/{path}"] = {
            "post": _simple(
                "Call with a supplied origin and identity (role gateway.full_role)",
                "channel",
                "path",
                tag="full",
            )
        }
    if controllers.auth and config.tokens:
        paths["/api/auth/{action}/{channel}/{type}"] = {
            "post": _simple(
                "Register, log in, refresh, log out or delete",
                "action",
                "channel",
                "type",
                tag="auth",
            )
        }
    if controllers.command and config.commands is not None:
        paths["/api/command/{path}"] = {
            "post": _simple("Issue an asynchronous command", "path", tag="command", ok="202")
        }
        paths["/api/command/status/{id}"] = {
            "get": _simple("A command's status", "id", body=False, tag="command")
        }
    if config.senders:
        paths["/api/send/{service}/{topic}/{key}"] = {
            "post": _simple(
                "Send a message to a topic", "service", "topic", "key", tag="send", ok="202"
            )
        }
    if controllers.file:
        paths.update(_file_paths(config))
    if controllers.control:
        paths["/api/control/{component}/{id}"] = {
            "get": _simple(
                "Show config (secrets redacted)", "component", "id", body=False, tag="control"
            ),
            "post": _simple(
                "Refresh config on every node", "component", "id", body=False, tag="control"
            ),
        }
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": f"busgate {config.gateway.id}",
            "version": f"config revision {revision}",
            "description": "Generated from the gateway's live configuration.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "requestId": {"type": "string"},
                            },
                        }
                    },
                },
                "ErrorCode": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code"],
                            "properties": {
                                "code": {"type": "string"},
                                "requestId": {"type": "string"},
                            },
                        }
                    },
                },
            },
            "securitySchemes": _schemes(config),
        },
    }
    if contributed:

        def operation(
            name: str, channel: Channel, suffix: str, need: Need, method: str, level: ErrorDetail
        ) -> dict[str, Any]:
            return _operation(config, "request", name, channel, suffix, need, method, level)

        merge(doc, config, contributed, operation, _error_level)
    return doc


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>busgate API</title>
<link rel="stylesheet" href="/api/docs/assets/swagger-ui.css"></head>
<body><div id="docs"></div>
<script src="/api/docs/assets/swagger-ui-bundle.js"></script>
<script src="/api/docs/assets/init.js"></script>
</body></html>
"""
INIT_JS = 'window.ui = SwaggerUIBundle({url: "/api/openapi.json", dom_id: "#docs"});\n'
ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js")


def _assets_dir() -> Path | None:
    try:
        import swagger_ui
    except ImportError:  # pragma: no cover - a dependency; the docs page says so
        return None
    return Path(swagger_ui.__file__).parent / "static"


class OpenApi:
    def __init__(self) -> None:
        self._cache: tuple[Config, int, int, bytes] | None = None
        self.assets = _assets_dir()
        self.store: Store[StoredSchema] | None = None
        self.contributions = 0
        """Bumped by every change of the store: the cached document is then built again."""
        self.ready = asyncio.Event()
        """Set once the store is followed (or could not be)."""

    def contributed(self) -> dict[str, bytes]:
        if self.store is None:
            return {}
        return {entry.key: entry.value.document for entry in self.store.items()}

    async def spec(self, request: web.Request) -> web.Response:
        live = request.app[keys.LIVE]
        revision = live.source.revision if live.source is not None else 0
        cached = self._cache
        seen = self.contributions
        if (
            cached is None
            or cached[0] is not live.config
            or cached[1] != revision
            or cached[2] != seen
        ):
            body = json_encode(document(live.config, revision, self.contributed()))
            cached = self._cache = (live.config, revision, seen, body)
        return web.Response(body=cached[3], content_type="application/json")

    async def docs(self, request: web.Request) -> web.Response:
        return web.Response(text=DOCS_PAGE, content_type="text/html")

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "init.js":
            return web.Response(text=INIT_JS, content_type="text/javascript")
        if name not in ASSETS or self.assets is None:  # a fixed list: no path from the client
            raise errors.NotFound(f"no asset {name!r}")
        return web.FileResponse(self.assets / name)

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Follow the contributed schemas (after the bus connected), started beside the
        node's start-up, not before it; without them (the bus refuses the store) the document
        is the gateway's own."""
        store = schemas(app[keys.BUS])
        task = asyncio.create_task(self._follow(store))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.store = None
        with contextlib.suppress(Exception):
            await store.close()

    async def _follow(self, store: Store[StoredSchema]) -> None:
        try:
            await store.start()
        except Exception as exc:
            log.warning("contributed schemas not followed: %s", exc)
            return
        finally:
            self.ready.set()

        def changed(change: Change[StoredSchema]) -> None:
            self.contributions += 1

        store.watch(changed)
        self.store = store
        self.contributions += 1


def install(app: web.Application) -> None:
    api = app[keys.OPENAPI] = OpenApi()
    app.cleanup_ctx.append(api.ctx)
    app.router.add_get("/api/openapi.json", api.spec)
    app.router.add_get("/api/docs", api.docs)
    app.router.add_get("/api/docs/assets/{name}", api.asset)
