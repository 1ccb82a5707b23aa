"""Headless Chromium for browser tests, driven over the DevTools protocol.

Debian's ``chromium`` package; :func:`ensure_chromium` installs it when it is missing (as
root, ``apt-get``; ``make browser`` does the same). The page reports to the test through a
``Runtime.addBinding`` function: each call arrives as a ``Runtime.bindingCalled`` event, so
the test awaits what the page saw instead of polling it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


def ensure_chromium() -> str:
    """The chromium binary; installs Debian's package first when it is missing."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("chromium is missing; run `make browser` as root to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    found = shutil.which("chromium")
    if not found:
        raise RuntimeError("apt-get installed chromium but it is not on PATH")
    return found


class Page:
    """One tab over a DevTools websocket: send commands, await events."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._results: dict[int, asyncio.Future[Any]] = {}
        self.bindings: asyncio.Queue[str] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._results.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(RuntimeError(str(data["error"])))
                    else:
                        fut.set_result(data.get("result"))
            elif data.get("method") == "Runtime.bindingCalled":
                self.bindings.put_nowait(data["params"]["payload"])
        for fut in self._results.values():
            if not fut.done():
                fut.set_exception(ConnectionError("DevTools connection closed"))

    async def send(self, method: str, **params: Any) -> Any:
        msg_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._results[msg_id] = fut
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        return await fut

    async def report(self) -> Any:
        """The next value the page passed to ``report(JSON.stringify(...))``."""
        return json.loads(await self.bindings.get())

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def chromium(binary: str) -> AsyncIterator[Page]:
    """A headless Chromium with a blank tab, its ``report`` binding set up."""
    with tempfile.TemporaryDirectory(prefix="busgate-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        drain: asyncio.Future[bytes] | None = None
        try:
            assert proc.stderr is not None
            browser_ws = ""
            async with asyncio.timeout(60):
                while not browser_ws:
                    line = await proc.stderr.readline()
                    if not line:
                        raise RuntimeError(f"chromium exited with {await proc.wait()}")
                    if m := _LISTENING.search(line.decode(errors="replace")):
                        browser_ws = m.group(1)
            # Keep draining stderr so that chromium never blocks on a full pipe.
            drain = asyncio.ensure_future(proc.stderr.read())
            http_base = "http://" + browser_ws.split("/")[2]
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{http_base}/json/list") as resp:
                    targets = await resp.json()
                page_ws = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
                async with session.ws_connect(page_ws, max_msg_size=0) as ws:
                    page = Page(ws)
                    try:
                        await page.send("Runtime.enable")
                        await page.send("Runtime.addBinding", name="report")
                        yield page
                    finally:
                        await page.close()
        finally:
            if drain is not None:
                drain.cancel()
            if proc.returncode is None:
                proc.terminate()
                try:
                    async with asyncio.timeout(10):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
