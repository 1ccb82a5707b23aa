"""Merge the schemas runners contribute (``bus.schemas``: a system's ``schema`` file or
``schema_url``, shared by its adapters) into the edge's OpenAPI document (``edge.openapi``).

A contribution is an OpenAPI 3.1 document of the system's sagas: ``paths`` keyed by the
saga's path (``/echo``), each operation's ``requestBody`` (``application/json``) describing
the payload (what runners get as ``parameters``) and its ``200`` answer; ``components.schemas``
what they refer to (``#/components/schemas/NAME``). For every channel of the system, the
saga's request operations (``/api/request/CHANNEL/SAGA``, the methods both the channel and
the document allow, not disabled) take those two schemas; a saga path the config does not
list gets its own path item, with the channel's access rules and error detail. Component
schemas are renamed ``SYSTEM.NAME`` (and every reference with them), so two runners cannot
clobber each other or the gateway's own.

Everything is checked before anything is merged: a contribution that is not JSON, names a
reference it does not define, holds a schema that is not a JSON Schema (2020-12, the
dialect of OpenAPI 3.1; ``jsonschema``) or a templated path is skipped whole, with a log
line; it never breaks ``/api/openapi.json``.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from busgate.bus.schemas import BadDocument, document_of
from busgate.contracts.config import Channel, Config, ErrorDetail, RpcSystem
from busgate.contracts.paths import refusal
from busgate.edge.access import ChannelAccess, Need

log = logging.getLogger("busgate.edge.openapi")

REF = "#/components/schemas/"
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
METHODS = ("get", "post", "put", "patch", "delete")
Operation = Callable[[str, Channel, str, Need, str, ErrorDetail], dict[str, Any]]


class Refused(ValueError):
    """What makes a contribution unusable."""


class Contribution:
    """One system's document, checked: per saga path and method its (payload, answer)
    schemas, and its component schemas, with references renamed for the system."""

    def __init__(self, system: str, data: bytes) -> None:
        self.system = system
        try:
            doc = document_of(data)
        except BadDocument as exc:
            raise Refused(str(exc)) from None
        components = doc.get("components", {})
        found = components.get("schemas", {}) if isinstance(components, dict) else None
        if not isinstance(found, dict):
            raise Refused("components.schemas: not an object")
        for name in found:
            if not _NAME.match(name):
                raise Refused(f"components.schemas.{name}: not a valid component name")
        self.names = set(found)
        self.components = {
            f"{system}.{name}": self._schema(value, f"components.schemas.{name}")
            for name, value in found.items()
        }
        self.sagas: dict[str, dict[str, tuple[Any, Any]]] = {}
        for key, item in doc["paths"].items():
            where = f"paths.{key}"
            path = key.strip("/") if isinstance(key, str) else ""
            if not path or "{" in path or refusal(path) is not None:
                raise Refused(f"{where}: not a plain saga path")
            if not isinstance(item, dict):
                raise Refused(f"{where}: not an object")
            ops: dict[str, tuple[Any, Any]] = {}
            for method, op in item.items():
                if method not in METHODS:
                    continue
                if not isinstance(op, dict):
                    raise Refused(f"{where}.{method}: not an object")
                ops[method.upper()] = (
                    self._json_schema(op.get("requestBody"), f"{where}.{method}.requestBody"),
                    self._json_schema(
                        (op.get("responses") or {}).get("200"), f"{where}.{method}.responses.200"
                    ),
                )
            if ops:
                self.sagas[path] = ops

    def _json_schema(self, holder: Any, where: str) -> Any:
        """The ``application/json`` schema of a request body or response; None if none."""
        if holder is None:
            return None
        if not isinstance(holder, dict):
            raise Refused(f"{where}: not an object")
        content = holder.get("content", {})
        media = content.get("application/json") if isinstance(content, dict) else None
        if not isinstance(media, dict) or "schema" not in media:
            return None
        return self._schema(media["schema"], f"{where}.content.application/json.schema")

    def _schema(self, schema: Any, where: str) -> Any:
        renamed = self._renamed(copy.deepcopy(schema), where)
        try:
            Draft202012Validator.check_schema(renamed)
        except SchemaError as exc:
            raise Refused(f"{where}: not a JSON Schema: {exc.message}") from None
        return renamed

    def _renamed(self, value: Any, where: str) -> Any:
        if isinstance(value, list):
            return [self._renamed(v, where) for v in value]
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key == "$ref":
                if not isinstance(item, str) or not item.startswith(REF):
                    raise Refused(f"{where}: $ref {item!r} is not {REF}NAME")
                name = item.removeprefix(REF)
                if name not in self.names:
                    raise Refused(f"{where}: $ref {item!r} names no component schema")
                out[key] = f"{REF}{self.system}.{name}"
            else:
                out[key] = self._renamed(item, where)
        return out


def merge(
    doc: dict[str, Any],
    config: Config,
    contributed: Mapping[str, bytes],
    operation: Operation,
    error_level: Callable[[Channel, str], ErrorDetail],
) -> None:
    """Merge the contributions of ``config``'s RPC systems into ``doc`` (in place).
    ``operation`` builds a request operation as the edge documents it; ``error_level`` says
    a path's error detail."""
    controllers = config.gateway.controllers
    if not controllers.request:
        return
    for system in sorted(contributed):
        if not isinstance(config.systems.get(system), RpcSystem):
            continue
        try:
            found = Contribution(system, contributed[system])
        except Refused as exc:
            log.warning("system %s: contributed schema skipped: %s", system, exc)
            continue
        doc["components"]["schemas"].update(found.components)
        for name, channel in sorted(config.channels.items()):
            if channel.system == system:
                _merge_channel(doc["paths"], name, channel, found, operation, error_level)


def _merge_channel(
    paths: dict[str, Any],
    name: str,
    channel: Channel,
    found: Contribution,
    operation: Operation,
    error_level: Callable[[Channel, str], ErrorDetail],
) -> None:
    access = ChannelAccess(channel)
    for saga, ops in found.sagas.items():
        url = f"/api/request/{name}/{saga}"
        item = paths.get(url)
        created = item is None
        item = {} if item is None else item
        for method, (payload, answer) in ops.items():
            op = item.get(method.lower())
            if op is None:
                if not created or method not in channel.methods:
                    continue
                need = access.need(saga, method)
                if need.disabled:
                    continue
                op = operation(name, channel, saga, need, method, error_level(channel, saga))
                item[method.lower()] = op
            if payload is not None and "requestBody" in op:
                op["requestBody"] = {"content": {"application/json": {"schema": payload}}}
            ok = op["responses"]["200"]["content"]
            if answer is not None and "application/json" in ok:
                ok["application/json"] = {"schema": answer}
            op["x-busgate-schema"] = found.system
        if created and item:
            paths[url] = item
