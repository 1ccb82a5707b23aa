"""``busgate config push|show``: the config revisions a fleet started with
``gateway.config_source = "bus"`` runs (``bus.config_source``)."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from busgate import bus as bus_
from busgate.bus.config_source import PushRefused, Revisions
from busgate.contracts.config import ConfigError, loads
from busgate.trace import bus_of


async def _with_revisions(
    url: str, prefix: str, work: Callable[[Revisions], Awaitable[int]]
) -> int:
    the_bus = bus_.from_url(url, node=f"cli-{secrets.token_hex(3)}", prefix=prefix)
    await the_bus.connect()
    revisions = Revisions(the_bus)
    try:
        await revisions.start()
        return await work(revisions)
    finally:
        await revisions.close()
        await the_bus.close()


def _where(args: argparse.Namespace, file: str | None) -> tuple[str, str]:
    """The bus: ``--bus``, else ``--config``, else the pushed file's own ``gateway.bus``."""
    if args.bus or args.config:
        return bus_of(args.bus, args.config, args.prefix)
    if file is not None:
        try:
            gateway = loads(Path(file).read_text(), env={}).gateway
        except (OSError, ConfigError):
            gateway = None
        if gateway is not None:
            return gateway.bus, args.prefix or gateway.prefix
    return bus_of(None, None, args.prefix)


def push(args: argparse.Namespace) -> int:
    text = ""
    if args.revision is None:
        if args.file is None:
            print("busgate config push: give a FILE or --revision N", file=sys.stderr)
            return 2
        try:
            text = Path(args.file).read_text()
        except OSError as exc:
            print(f"busgate config push: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return 2
    url, prefix = _where(args, args.file)

    async def work(revisions: Revisions) -> int:
        if args.revision is not None:
            pushed = await revisions.rollback(args.revision)
        else:
            pushed = await revisions.push(text)
        note = f" (rollback to {pushed.rollback_of})" if pushed.rollback_of else ""
        print(f"busgate config: revision {pushed.number} is live{note}")
        return 0

    try:
        return asyncio.run(_with_revisions(url, prefix, work))
    except PushRefused as exc:
        print(f"busgate config push: refused, nothing published: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"busgate config push: {exc}", file=sys.stderr)
        return 2


def show(args: argparse.Namespace) -> int:
    url, prefix = _where(args, None)

    async def work(revisions: Revisions) -> int:
        live = revisions.live()
        if live is None:
            print("busgate config: no revision pushed; nodes run their own files")
        else:
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(live.pushed_at))
            print(f"live revision {live.number}  sha256 {live.sha256[:12]}  pushed {at}")
        for node in revisions.reports():
            state = f"runs {node.revision}"
            if node.failed:
                state += f", refused {node.failed}: {node.error}"
            print(f"  {node.role:8} {node.node}  {state}")
        if args.text and live is not None:
            print(live.text)
        return 0

    return asyncio.run(_with_revisions(url, prefix, work))


def add_parsers(config_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = config_sub.add_parser("push", help="validate a config file and make it the live revision")
    p.add_argument("file", nargs="?")
    p.add_argument("--revision", type=int, help="roll back: push revision N's text again")
    s = config_sub.add_parser("show", help="the live revision and which nodes run it")
    s.add_argument("--text", action="store_true", help="print the live revision's text too")
    for sub in (p, s):
        sub.add_argument("--bus", help="bus URL (default: --config's or the file's)")
        sub.add_argument("--config", help="a config file naming the bus and prefix")
        sub.add_argument("--prefix")
    p.set_defaults(func=push)
    s.set_defaults(func=show)
