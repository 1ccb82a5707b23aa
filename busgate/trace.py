"""``busgate trace ID``: one call's waterfall, assembled from the spans every node exports
onto the bus (``bus.trace_export``); ``busgate trace --follow`` prints calls as they end.

``ID`` is a request id (``X-Request-Id``) or a trace id (32 hex digits, ``X-Trace-Id``). The
waterfall shows each hop with the node that made it, its offset from the start of the call,
its duration and status, and the bus transit both ways: from the edge's PRODUCER span
(publish until the reply is in) and the adapter's CONSUMER span (taken off the bus until
answered).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from busgate.bus.spans import ERROR, Kind, SpanBatch, SpanData, decode_batch
from busgate.bus.tracing import REQUEST_ID

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
SERVER, CLIENT, PRODUCER, CONSUMER = Kind.SERVER, Kind.CLIENT, Kind.PRODUCER, Kind.CONSUMER


def dev_state_file() -> Path:
    """Where ``busgate dev`` leaves its bus URL, so ``busgate trace`` finds it."""
    return Path(tempfile.gettempdir()) / f"busgate-dev-{os.getuid()}.json"


@dataclass
class SpanRecord:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    start: int
    """Nanoseconds since the epoch."""
    end: int
    attributes: dict[str, Any]
    error: bool
    service: str
    instance: str
    links: list[tuple[str, str]] = field(default_factory=list)
    """(trace id, span id) of linked spans: a command's execution, of the call that issued it."""
    children: list[SpanRecord] = field(default_factory=list)

    @property
    def ms(self) -> float:
        return (self.end - self.start) / 1e6


def decode(batches: Iterable[bytes]) -> list[SpanRecord]:
    """The spans of span batches (``bus.spans``), each span once; a batch that is not one
    (another version's, say) is skipped."""
    seen: dict[str, SpanRecord] = {}
    for data in batches:
        try:
            batch = decode_batch(data)
        except msgspec.DecodeError:
            continue
        for node in batch.all():
            for recorded in node.spans:
                for span in recorded.family():
                    seen[span.span_id] = _record(span, node)
    return sorted(seen.values(), key=lambda s: s.start)


def of_call(
    spans: list[SpanRecord], *, trace_id: str = "", request_id: str = ""
) -> list[SpanRecord]:
    """The spans of one trace, or of one request (every busgate span names its request):
    a span message holds the spans of every call in its bucket (``bus.trace_export``)."""
    if trace_id:
        return [s for s in spans if s.trace_id == trace_id]
    return [s for s in spans if s.attributes.get(REQUEST_ID) == request_id]


def _record(span: SpanData, batch: SpanBatch) -> SpanRecord:
    return SpanRecord(
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent_id=span.parent_id,
        name=span.name,
        kind=span.kind,
        start=span.start,
        end=span.end,
        attributes=span.attributes,
        error=span.status == ERROR,
        service=batch.service,
        instance=batch.instance,
        links=[(link.trace_id, link.span_id) for link in span.links],
    )


def roots(spans: list[SpanRecord]) -> list[SpanRecord]:
    """Link children to parents; the spans whose parent is not here are the roots."""
    by_id = {s.span_id: s for s in spans}
    for span in spans:
        span.children = []
    found = []
    for span in spans:
        parent = by_id.get(span.parent_id)
        if parent is None:
            found.append(span)
        else:
            parent.children.append(span)
    return found


PUBLISHED = ("command", "message")
"""Kinds of PRODUCER spans nobody answers in the same trace (a command's execution is a
trace of its own, linked to its PRODUCER span)."""


def complete(spans: list[SpanRecord]) -> bool:
    """A SERVER span (or a command execution's linked CONSUMER) is in, and every bus request
    has its adapter's CONSUMER span."""
    roots(spans)
    if not any(s.kind == SERVER or (s.kind == CONSUMER and s.links) for s in spans):
        return False
    return all(
        any(c.kind == CONSUMER for c in s.children)
        for s in spans
        if s.kind == PRODUCER and s.attributes.get("busgate.kind") not in PUBLISHED
    )


def _status(span: SpanRecord) -> str:
    status = span.attributes.get("http.response.status_code")
    code = span.attributes.get("error.type")
    if status is not None:
        return f"{status}" + (f" {code}" if code else "")
    return f"error {code}" if span.error else "ok"


@dataclass
class Row:
    who: str
    where: str
    label: str
    offset: float
    ms: float
    status: str
    depth: int


def _rows(span: SpanRecord, t0: int, depth: int, out: list[Row]) -> None:
    a = span.attributes
    offset = (span.start - t0) / 1e6
    if span.kind == PRODUCER:
        consumer = next((c for c in span.children if c.kind == CONSUMER), None)
        where = f"{a.get('messaging.system', '')} {a.get('messaging.destination.name', '')}"
        kind = a.get("busgate.kind")
        if kind in PUBLISHED:
            out.append(Row("bus", where, f"publish {kind}", offset, span.ms, _status(span), depth))
            return
        if consumer is None:
            out.append(Row("bus", where, "request (no adapter span)", offset, span.ms, "", depth))
            return
        transit = (consumer.start - span.start) / 1e6
        hop = "publish → runner" if "busgate.saga" in consumer.attributes else "publish → adapter"
        out.append(Row("bus", where, hop, offset, transit, _status(span), depth))
        _rows(consumer, t0, depth + 1, out)
        back = (span.end - consumer.end) / 1e6
        out.append(Row("bus", "reply", "reply → edge", (consumer.end - t0) / 1e6, back, "", depth))
        return
    if span.kind == SERVER:
        row = Row("edge", span.instance, f"http server {span.name}", offset, span.ms, "", depth)
    elif span.kind == CONSUMER and "busgate.saga" in a:  # a bus-native runner's call
        saga = str(a["busgate.saga"])
        row = Row("runner", span.instance, f"saga {saga}", offset, span.ms, "", depth)
    elif span.kind == CONSUMER:
        row = Row("adapter", span.instance, "process", offset, span.ms, "", depth)
    elif span.kind == CLIENT:
        url = str(a.get("url.full", ""))
        path = url.split("/", 3)[-1] if "://" in url else url
        row = Row(
            "runner",
            str(a.get("busgate.system", "")),
            f"POST …/{path.rsplit('/', 1)[-1]}",
            offset,
            span.ms,
            "",
            depth,
        )
    else:
        row = Row(span.service, span.instance, span.name, offset, span.ms, "", depth)
    row.status = _status(span)
    out.append(row)
    for child in sorted(span.children, key=lambda c: c.start):
        _rows(child, t0, depth + 1, out)


def waterfall(spans: list[SpanRecord]) -> list[str]:
    """The lines ``busgate trace ID`` prints."""
    lines: list[str] = []
    for root in roots(spans):
        a = root.attributes
        what = f"{a.get('http.request.method', '')} {a.get('url.path', root.name)}".strip()
        lines.append(f"trace {root.trace_id}  {what}  {_status(root)}  {root.ms:.1f} ms")
        for trace_id, span_id in root.links:
            lines.append(f"  linked to trace {trace_id} span {span_id} (the call that issued it)")
        rows: list[Row] = []
        _rows(root, root.start, 0, rows)
        for row in rows:
            tree = "│ " * row.depth + "├─ " + row.label
            lines.append(
                f"  {row.who:<8}{row.where[:30]:<31}{tree:<44}"
                f"{row.offset:>8.1f} {row.ms:>8.1f} ms  {row.status}"
            )
    return lines


def follow_line(span: SpanRecord) -> str:
    a = span.attributes
    at = time.strftime("%H:%M:%S", time.localtime(span.start / 1e9))
    return (
        f"{at}  {a.get('busgate.request_id', '')}  {a.get('http.request.method', '')} "
        f"{a.get('url.path', '')}  {_status(span)}  {span.ms:.1f} ms  trace {span.trace_id}"
    )


# -- the command ---------------------------------------------------------------------------


def bus_of(bus: str | None, config_path: str | None, prefix: str | None) -> tuple[str, str]:
    """(bus URL, prefix): ``--bus``, else ``--config`` (with ``BUSGATE__`` overrides), else a
    running ``busgate dev``, else the default configuration."""
    from busgate.contracts.config import load

    if bus:
        return bus, prefix or "busgate"
    if config_path is None and "BUSGATE__GATEWAY__BUS" not in os.environ:
        state = dev_state_file()
        if state.exists():
            with open(state) as f:
                found = json.load(f)
            return found["bus"], prefix or found.get("prefix", "busgate")
    config = load(config_path)
    return config.gateway.bus, prefix or config.gateway.prefix


async def show(url: str, prefix: str, ident: str, wait: float) -> int:
    from busgate.bus.trace_export import read_call

    # 32 hex digits: a trace id, or a command id (they look alike): spans by trace id first.
    asks = [{"request_id": ident}]
    if _TRACE_ID.match(ident.lower()):
        asks.insert(0, {"trace_id": ident.lower()})
    end = time.monotonic() + wait
    spans: list[SpanRecord] = []
    while True:
        for ask in asks:
            # A message that names the id may still hold none of its spans (a command id
            # found as an attribute when asked as a trace id): found means spans kept.
            spans = of_call(decode(await read_call(url, prefix, **ask)), **ask)
            if spans:
                asks = [ask]  # found: keep asking the same way
                break
        if complete(spans) or time.monotonic() >= end:
            break
        await asyncio.sleep(0.2)  # the nodes export in batches (bus.trace_export)
    if not spans:
        print(
            f"busgate trace: no spans for {ident!r} on {url} (sampled? exported?)", file=sys.stderr
        )
        return 1
    for line in waterfall(spans):
        print(line)
    if not complete(spans):
        print("  (incomplete: some spans did not arrive)")
    return 0


async def follow(url: str, prefix: str, channel: str | None) -> int:
    from busgate.bus.trace_export import follow as follow_bus

    def ready() -> None:
        where = f" on channel {channel}" if channel else ""
        print(f"busgate trace: following calls{where} on {url} (Ctrl-C stops)", file=sys.stderr)
        sys.stderr.flush()

    async for data in follow_bus(url, prefix, ready):
        for span in decode([data]):
            if span.kind != SERVER:
                continue
            if channel is not None and span.attributes.get("busgate.channel") != channel:
                continue
            print(follow_line(span), flush=True)
    return 0


def run(
    ident: str | None,
    *,
    bus: str | None,
    config: str | None,
    prefix: str | None,
    follow_calls: bool,
    channel: str | None,
    wait: float,
) -> int:
    url, prefix_ = bus_of(bus, config, prefix)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # the output is the waterfall
    try:
        if follow_calls:
            return asyncio.run(follow(url, prefix_, channel))
        if not ident:
            print("busgate trace: give a request id or trace id, or --follow", file=sys.stderr)
            return 2
        return asyncio.run(show(url, prefix_, ident, wait))
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # unreachable broker, no servers, ...: a message, no traceback
        print(f"busgate trace: cannot read the bus at {url}: {exc!r}", file=sys.stderr)
        return 1
