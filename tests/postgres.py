"""A throwaway PostgreSQL server for tests: the machine's binaries, a temporary folder, a
free port; never the machine's own service.

Started once per test session (the first test that asks), stopped at exit. initdb refuses
to run as root, so as root the server runs as ``nobody`` (``setpriv``).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time

from busgate.brokers import free_port


def _bin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class Postgres:
    def __init__(self) -> None:
        bindir = _bin_dir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries (initdb) on this machine")
        self.bindir = bindir
        self.tmp = tempfile.mkdtemp(prefix="busgate-pg-")
        self.data = os.path.join(self.tmp, "data")
        self.port = free_port()
        self.url = f"postgresql://busgate@127.0.0.1:{self.port}/postgres"
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            os.chown(self.tmp, 65534, 65534)
            self._as = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

    def start(self) -> None:
        subprocess.run(
            [
                *self._as,
                f"{self.bindir}/initdb",
                "-D",
                self.data,
                "-U",
                "busgate",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )
        self.proc = subprocess.Popen(
            [
                *self._as,
                f"{self.bindir}/postgres",
                "-D",
                self.data,
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                self.tmp,
                "-c",
                "fsync=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}")
            ready = subprocess.run(
                [f"{self.bindir}/pg_isready", "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError("postgres did not accept connections within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: no wait for clients
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.tmp)


_server: Postgres | None = None


def shared_postgres() -> Postgres:
    """The session's server, started at the first call."""
    global _server
    if _server is None:
        server = Postgres()
        server.start()
        atexit.register(server.stop)
        _server = server
    return _server
