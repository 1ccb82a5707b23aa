"""Answers in XML, HTML, CSV or plain text when the caller's ``Accept`` asks (JSON stays the
default), converted at the edge from the runner's JSON; 406 when ``Accept`` names none.

Decided before the call goes out (a 406 never costs a runner call). The common case -- no
``Accept``, ``*/*`` or JSON first -- is one header read and a prefix test. Only successful
JSON answers are converted; errors stay JSON (one error shape everywhere). A list of
objects becomes rows (CSV, an HTML table); nested values are written as JSON text.
"""

from __future__ import annotations

import csv
import html
import io
import re
from typing import Any
from xml.etree import ElementTree as ET

import msgspec
from aiohttp import web

from busgate.contracts.errors import NotAcceptable
from busgate.contracts.wire import Reply
from busgate.edge.headers import checked
from busgate.edge.responses import from_reply

MEDIA = {
    "application/json": "json",
    "application/*": "json",
    "*/*": "json",
    "application/xml": "xml",
    "text/xml": "xml",
    "text/html": "html",
    "text/csv": "csv",
    "text/plain": "text",
    "text/*": "text",
}
CONTENT_TYPE = {
    "xml": "application/xml",
    "html": "text/html",
    "csv": "text/csv",
    "text": "text/plain",
}
_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


NO_EXTENSION = r"(?<!\.xml)(?<!\.html)(?<!\.txt)(?<!\.csv)"
EXTENSION_PATH = r"/api/request/{channel:(?!full/)[^/]+}/{path:[\s\S]*}{ext:\.(?:xml|html|txt|csv)}"
"""``/api/request/demo/report.csv`` (tried after the plain route, which refuses it): the route
takes the extension off ``path``, so the access rules judge, and the runner receives,
``report`` -- the same path."""
EXTENSIONS = {".xml": "xml", ".html": "html", ".txt": "text", ".csv": "csv"}


def wanted(request: web.Request) -> str | None:
    """The format to answer in (None = JSON as the runner sent it); raises NotAcceptable.
    A path extension wins over ``Accept``."""
    ext = request.match_info.get("ext")
    if ext:
        return EXTENSIONS[ext]
    accept = request.headers.get("Accept")
    if accept is None or accept.startswith(("application/json", "*/*")):
        return None
    accept = checked("Accept", accept)  # 400 for bytes that are not UTF-8
    best, best_q = "", -1.0
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        fmt = MEDIA.get(media.strip().lower())
        if fmt is not None and q > 0 and q > best_q:
            best, best_q = fmt, q
    if not best:
        raise NotAcceptable(
            "this endpoint answers in application/json, application/xml, text/html, "
            "text/csv or text/plain"
        )
    return None if best == "json" else best


def render(reply: Reply, fmt: str) -> web.Response:
    content_type = reply.headers.get("content-type", "application/json")
    if not 200 <= reply.status < 300 or "json" not in content_type:
        return from_reply(reply)
    try:
        data = msgspec.json.decode(reply.body) if reply.body else None
    except msgspec.DecodeError:
        return from_reply(reply)
    body = CONVERT[fmt](data)
    return web.Response(
        status=reply.status, text=body, content_type=CONTENT_TYPE[fmt], charset="utf-8"
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


def _rows(data: Any) -> tuple[list[str], list[list[str]]]:
    """Columns and rows: a list of objects (the union of their keys), one object, or values."""
    items = data if isinstance(data, list) else [data]
    if items and all(isinstance(i, dict) for i in items):
        columns: dict[str, None] = {}
        for item in items:
            columns.update(dict.fromkeys(item))
        return list(columns), [[_cell(i.get(c)) for c in columns] for i in items]
    return ["value"], [[_cell(i)] for i in items]


def to_csv(data: Any) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    columns, rows = _rows(data)
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


def to_html(data: Any) -> str:
    columns, rows = _rows(data)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows
    )
    return (
        '<!doctype html><html><head><meta charset="utf-8"></head><body>'
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>"
    )


def _xml(parent: ET.Element, value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if _XML_NAME.match(key) and not key.lower().startswith("xml"):
                child = ET.SubElement(parent, key)
            else:  # not a valid element name: keep the key as an attribute
                child = ET.SubElement(parent, "entry", key=key)
            _xml(child, item)
    elif isinstance(value, list):
        for item in value:
            _xml(ET.SubElement(parent, "item"), item)
    elif value is not None:
        parent.text = value if isinstance(value, str) else _cell(value)


def to_xml(data: Any) -> str:
    root = ET.Element("response")
    _xml(root, data)
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def to_text(data: Any) -> str:
    if isinstance(data, str):
        return data
    if isinstance(data, list | dict):
        columns, rows = _rows(data)
        return "\n".join("\t".join(r) for r in [columns, *rows]) + "\n"
    return _cell(data)


CONVERT = {"csv": to_csv, "html": to_html, "xml": to_xml, "text": to_text}
