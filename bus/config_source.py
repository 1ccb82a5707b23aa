"""Where a running node gets its config from, and how it learns of a new one.

Two sources, one interface (``ConfigSource.follow``): the node's file, re-read every
``gateway.refresh`` seconds, and the revisions ``busgate config push`` keeps in the shared
store (``bus.store``, kinds ``config`` and ``config_nodes``), applied the moment the store's
watch brings one. File polling sits here beside the bus source so edge and adapter share one
follower; it is the only file I/O in ``bus/``.

A node hands each new config to its ``apply`` callback; an ``apply`` that raises keeps the
previous config, and the node's report in ``config_nodes`` says which revision it refused and
why (``busgate config show``, ``/api/control``).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from busgate.bus.store import Change, MemoryBackend, open_store
from busgate.contracts.config import Config, ConfigError, loads, with_shared
from busgate.contracts.revisions import ConfigRevision, NodeConfig
from busgate.contracts.wire import Refresh, Refreshed

if TYPE_CHECKING:
    from busgate.bus.base import Bus

log = logging.getLogger("busgate.config")

LIVE = "live"
"""The key of the revision every node runs; ``rev.N`` keeps each pushed text."""
NODE_TTL = 60.0
"""Seconds a node's report lives unless renewed (a stopped node leaves ``config show``)."""

Apply = Callable[[Config], Awaitable[None]]


class PushRefused(ConfigError):
    """The pushed text is not a valid config: nothing was published."""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Revisions:
    """The pushed revisions and the nodes' reports on the shared store."""

    def __init__(self, bus: Bus | None, backend: MemoryBackend | None = None) -> None:
        """``backend``: shared process memory, for nodes without a real bus (tests)."""
        self.revisions = open_store(bus, "config", ConfigRevision, backend=backend)
        self.nodes = open_store(bus, "config_nodes", NodeConfig, backend=backend)

    async def start(self) -> None:
        await self.revisions.start()
        await self.nodes.start()

    async def close(self) -> None:
        await self.nodes.close()
        await self.revisions.close()

    def live(self) -> ConfigRevision | None:
        return self.revisions.value(LIVE)

    def history(self) -> list[ConfigRevision]:
        return sorted((e.value for e in self.revisions.items("rev.")), key=lambda r: r.number)

    def reports(self) -> list[NodeConfig]:
        return sorted((e.value for e in self.nodes.items("node.")), key=lambda n: n.node)

    async def push(self, text: str, *, rollback_of: int = 0) -> ConfigRevision:
        """Validate ``text`` and make it the live revision; ``PushRefused`` if it is invalid
        (then no node ever sees it). Concurrent pushes get distinct numbers."""
        try:
            loads(text, env={})  # the text as pushed: node environments are not ours to read
        except ConfigError as exc:
            raise PushRefused(str(exc)) from None
        taken = 0  # the highest number a racing push took (our view may not show it yet)
        while True:
            current = await self.revisions.get(LIVE)
            known = max((r.number for r in self.history()), default=0)
            number = max(known, taken, current.value.number if current else 0) + 1
            revision = ConfigRevision(
                number=number,
                text=text,
                sha256=_sha(text),
                pushed_at=time.time(),
                pushed_by=_user(),
                rollback_of=rollback_of,
            )
            if await self.revisions.create(f"rev.{number}", revision) is None:
                taken = number  # another push took the number
                continue
            # The number is ours: make it live unless a later push already made a higher one
            # live (then ours would undo it). A racing lower number is overtaken, not waited
            # for: retrying with a new number left the one taken here unused in the history.
            while current is None or current.value.number < number:
                if current is None:
                    won = await self.revisions.create(LIVE, revision)
                else:
                    won = await self.revisions.compare_and_set(LIVE, revision, current.revision)
                if won is not None:
                    return revision
                current = await self.revisions.get(LIVE)

    async def rollback(self, number: int) -> ConfigRevision:
        old = self.revisions.value(f"rev.{number}")
        if old is None:
            raise ConfigError(f"no revision {number}; known: {[r.number for r in self.history()]}")
        return await self.push(old.text, rollback_of=number)

    async def report(self, status: NodeConfig) -> None:
        await self.nodes.put(f"node.{status.node}", status, ttl=NODE_TTL)


def _user() -> str:
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return ""


class ConfigSource:
    """Follows a node's config source and applies what changes, one change at a time."""

    def __init__(
        self, node_config: Config, *, node: str, role: str, path: str | None = None
    ) -> None:
        self.base = node_config
        """The node's own file: its gateway and telemetry, and the config until a revision."""
        self.node = node
        self.role = role
        self.path = path
        self.current = node_config
        self.revision = 0
        """The revision running (0 = the node's own file)."""
        self.failed = 0
        self.error = ""
        self.applied = asyncio.Event()
        """Set after each attempt to apply (tests and ``/api/control`` wait on it)."""
        self.revisions: Revisions | None = None
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._apply: Apply | None = None
        self._file_text = Path(path).read_text() if path else ""

    @property
    def on_bus(self) -> bool:
        return self.base.gateway.config_source == "bus"

    async def start(
        self, bus: Bus | None, apply: Apply, revisions: Revisions | None = None
    ) -> Config:
        """Begin following; returns the config to start with (a bus source's live revision,
        if there is one)."""
        self._apply = apply
        if self.on_bus:
            self.revisions = revisions or Revisions(bus)
            if revisions is None:
                await self.revisions.start()
            live = self.revisions.live()
            if live is not None:
                try:
                    config = self._parse(live)
                    await apply(config)
                except Exception as exc:  # keep the node's own file, say so
                    self._refused(live.number, str(exc) or type(exc).__name__)
                else:
                    self.current, self.revision = config, live.number
            self.revisions.revisions.watch(self._on_change)
            self._tasks.append(asyncio.create_task(self._heartbeat()))
            await self._report()
        elif self.path and self.base.gateway.refresh > 0:
            self._tasks.append(asyncio.create_task(self._poll(self.base.gateway.refresh)))
        return self.current

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.revisions is not None:
            with contextlib.suppress(Exception):
                await self.revisions.nodes.delete(f"node.{self.node}")
            await self.revisions.close()

    def _parse(self, revision: ConfigRevision) -> Config:
        return with_shared(self.base, loads(revision.text))

    def _on_change(self, change: Change[ConfigRevision]) -> None:
        if change.key != LIVE or change.entry is None:
            return
        revision = change.entry.value
        if revision.number == self.revision:
            return
        task = asyncio.create_task(self._apply_revision(revision))
        self._tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def _apply_revision(self, revision: ConfigRevision) -> None:
        async with self._lock:
            live = self.revisions.live() if self.revisions else None
            if live is not None and live.number != revision.number:
                return  # a newer one came meanwhile; its own task applies it
            try:
                config = self._parse(revision)
                await self._run_apply(config)
            except Exception as exc:  # any failure: keep the previous config, say so
                self._refused(revision.number, str(exc) or type(exc).__name__)
            else:
                self.current, self.revision, self.failed, self.error = (
                    config,
                    revision.number,
                    0,
                    "",
                )
                log.info("config: revision %d applied", revision.number)
            self.applied.set()
            with contextlib.suppress(Exception):
                await self._report()

    async def _run_apply(self, config: Config) -> None:
        assert self._apply is not None
        await self._apply(config)

    def _refused(self, number: int, error: str) -> None:
        self.failed, self.error = number, error
        log.error(
            "config: revision %d not applied, still running %d: %s", number, self.revision, error
        )

    async def _report(self) -> None:
        if self.revisions is None:
            return
        await self.revisions.report(
            NodeConfig(
                node=self.node,
                role=self.role,
                revision=self.revision,
                applied_at=time.time(),
                failed=self.failed,
                error=self.error,
            )
        )

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(NODE_TTL / 3)
            with contextlib.suppress(Exception):
                await self._report()

    async def refresh(self) -> bool:
        """Re-read the source now (``POST /api/control``); True if the node runs what the
        source holds afterwards."""
        if self.on_bus and self.revisions is not None:
            live = self.revisions.live()
            if live is not None and live.number != self.revision:
                await self._apply_revision(live)
            return live is None or self.revision == live.number
        return await self._reread()

    async def answer(self, msg: Refresh) -> Refreshed:
        """A Refresh from the control subject: re-read now, say what runs after it."""
        ok = await self.refresh()
        return Refreshed(
            id=msg.id,
            node=self.node,
            role=self.role,
            revision=self.revision,
            ok=ok,
            error=self.error,
        )

    async def _poll(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            await self._reread()

    async def _reread(self) -> bool:
        assert self.path is not None
        async with self._lock:
            try:
                text = await asyncio.to_thread(Path(self.path).read_text)
            except OSError as exc:
                self._refused(0, f"cannot read {self.path}: {exc.strerror}")
                return False
            if text == self._file_text:
                return not self.error
            try:
                config = with_shared(self.base, loads(text))
                await self._run_apply(config)
            except Exception as exc:
                self._refused(0, str(exc) or type(exc).__name__)
                self.applied.set()
                return False
            self._file_text, self.current, self.error = text, config, ""
            log.info("config: %s re-read and applied", self.path)
            self.applied.set()
            return True


def fixed(node: str, role: str) -> Callable[[Refresh], Awaitable[Refreshed]]:
    """How a node without a refreshable source (``refresh = -1``, or no file) answers."""

    async def answer(msg: Refresh) -> Refreshed:
        why = "not refreshable: config_source = file, with refresh = -1 or no file"
        return Refreshed(id=msg.id, node=node, role=role, ok=False, error=why)

    return answer


async def initial_config(config: Config) -> Config:
    """The config a node with ``config_source = "bus"`` starts with: the live revision's
    shared sections over its own file (the file alone when none was pushed, or when the live
    one does not validate here). Read before the node is built, so that what is installed
    once at start (the auth routes, the session store) matches the revision."""
    if config.gateway.config_source != "bus":
        return config
    from busgate import bus as bus_

    gateway = config.gateway
    boot = bus_.from_url(gateway.bus, node=f"{gateway.id}-boot-{_hex()}", prefix=gateway.prefix)
    await boot.connect()
    try:
        revisions = Revisions(boot)
        await revisions.start()
        live = revisions.live()
        await revisions.close()
    finally:
        await boot.close()
    if live is None:
        return config
    try:
        return with_shared(config, loads(live.text))
    except ConfigError as exc:
        log.error(
            "config: revision %d does not run here, starting with the file: %s", live.number, exc
        )
        return config


def _hex() -> str:
    import secrets

    return secrets.token_hex(3)
