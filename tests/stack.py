"""A whole busgate stack as separate processes, started through ``busgate dev``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from busgate.brokers import PORT_TRIES, free_port, start_on_free_port

_READY = re.compile(r"busgate dev ready: (\S+)")
_PART = re.compile(r"busgate dev: (\w+)\s+(\S+)")


@dataclass
class DevStack:
    bus: str
    url: str = ""
    parts: dict[str, str] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)
    """Notified for each line of output."""

    def wait_for_output(self, check: Callable[[list[str]], bool], timeout: float = 10) -> bool:
        """Whether ``check(output)`` held within ``timeout`` seconds (woken by each line)."""
        with self.changed:
            return self.changed.wait_for(lambda: check(self.output), timeout)

    @property
    def runner(self) -> str:
        """The sample runner's base URL (its ``/calls`` log is at the root)."""
        return self.parts["runner"].rsplit("/api/", 1)[0]


@contextlib.contextmanager
def dev_stack(
    bus: str = "nats",
    env: dict[str, str] | None = None,
    timeout: float = 90,
    args: tuple[str, ...] = (),
    options: tuple[str, ...] = (),
) -> Iterator[DevStack]:
    """``options``: more arguments to ``busgate dev``. The edge's port, chosen here, may be
    taken by another process before the edge binds it: then the stack starts again on
    another (``busgate dev`` does the same for the ports it chooses itself)."""
    for attempt in range(PORT_TRIES):
        stack, stop = _start_dev(bus, env, timeout, args, options)
        if stack.url:
            break
        stop()
        if attempt == PORT_TRIES - 1 or not any(_TAKEN in line for line in stack.output):
            raise RuntimeError("busgate dev did not get ready:\n" + "\n".join(stack.output))
    try:
        yield stack
    finally:
        stop()


_TAKEN = "address already in use"


def _start_dev(
    bus: str,
    env: dict[str, str] | None,
    timeout: float,
    args: tuple[str, ...],
    options: tuple[str, ...],
) -> tuple[DevStack, Callable[[], None]]:
    """A started ``busgate dev`` (``stack.url`` empty if it did not get ready) and what
    stops it."""
    port = free_port()
    stack = DevStack(bus=bus)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "busgate",
            "dev",
            "--bus",
            bus,
            "--listen",
            f"127.0.0.1:{port}",
            *args,
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    stack.proc = proc
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with stack.changed:
                stack.output.append(line.rstrip())
                stack.changed.notify_all()
            if m := _PART.match(line):
                stack.parts[m.group(1)] = m.group(2)
            if m := _READY.search(line):
                stack.url = m.group(1)
                ready.set()
        ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()  # else its pipe is left to the garbage collector (ResourceWarning)

    try:
        ready.wait(timeout)
    except BaseException:
        stop()
        raise
    return stack, stop


async def start_tail(
    what: str, env: dict[str, str], wait: float = 30
) -> asyncio.subprocess.Process:
    """``busgate tail WHAT`` on the dev config as its own process, returned once it follows
    (its stderr says so): from then on, what is published is printed."""
    from busgate.cli import DEV_CONFIG

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "busgate",
        "tail",
        what,
        "--config",
        str(DEV_CONFIG),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while b"busgate tail: following" not in (
            line := await asyncio.wait_for(proc.stderr.readline(), wait)
        ):
            assert line, "busgate tail ended before it followed anything"
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc


@contextlib.contextmanager
def runner_process() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A sample RPC runner as its own process: (base URL of its root, process)."""
    port, proc = start_on_free_port(
        lambda port: subprocess.Popen(
            [sys.executable, "-m", "busgate", "runner", "rpc", "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(15)
