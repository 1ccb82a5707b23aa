"""Processes under test: started from data (argv + readiness check), always stopped.

Every process starts in its own session (so a Ctrl-C in the terminal reaches only the
harness, which then stops them in order) and with a parent-death signal (so not even a
killed harness leaves them running). Output goes to ``bench/results/logs/`` for post-mortems.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOGS = RESULTS / "logs"
HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Ready:
    """When a process counts as started: a port accepts, an HTTP GET answers 200, or (for
    processes without a port, like a responder) it is still alive after ``settle`` seconds.
    End-to-end readiness (the first request through) is checked by the scenario's probe."""

    port: int | None = None
    http: str | None = None
    settle: float = 0.3


@dataclass(frozen=True)
class ProcSpec:
    """One process of a scenario, as data."""

    name: str
    argv: list[str]
    ready: Ready = field(default_factory=Ready)
    env: dict[str, str] = field(default_factory=dict)
    under_test: bool = True
    """False for shared infrastructure (the broker), reported but not part of a stack."""


class ProcessFailed(RuntimeError):
    """A process died or never became ready; the message carries its log's tail."""


def die_with_parent() -> None:
    """In a child, before exec: be killed when the harness dies, even by SIGKILL (a process
    under test may take its time over SIGTERM; the orderly path sends that first)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _own_session() -> None:
    os.setsid()
    die_with_parent()


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                out.extend(kids)
                stack.extend(kids)
    return out


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` and its descendants, in kB (psutil is not a dependency)."""
    total = 0
    for p in [pid, *_descendants(pid)]:
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants, in seconds."""
    total = 0
    for p in [pid, *_descendants(pid)]:
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / _CLK_TCK


class Proc:
    """A started process."""

    def __init__(self, spec: ProcSpec, popen: subprocess.Popen[bytes], log: Path, tag: str) -> None:
        self.spec = spec
        self.tag = tag
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_mb(self) -> float:
        return round(rss_kb(self.pid) / 1024, 1)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to its process group, SIGKILL after ``timeout``."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait()
        # Grandchildren that outlived their parent in the same group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def port_open(port: int, host: str = HOST) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def unverified(url: str) -> ssl.SSLContext | None:
    """For ``https://`` stacks: the bench measures them, it does not check their certificate."""
    return ssl._create_unverified_context() if url.startswith("https://") else None


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=unverified(url)) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


class Processes:
    """Starts processes and stops all of them, last first, on exit — whatever happened."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def start(self, spec: ProcSpec, tag: str, timeout: float = 30.0) -> Proc:
        """Start ``spec`` (logging to ``logs/TAG.NAME.log``) and wait until it is ready."""
        LOGS.mkdir(parents=True, exist_ok=True)
        log = LOGS / f"{tag}.{spec.name}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **spec.env}
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                preexec_fn=_own_session,  # the harness is single-threaded
            )
        proc = Proc(spec, popen, log, tag)
        self.procs.append(proc)
        self._wait_ready(proc, timeout)
        return proc

    def _wait_ready(self, proc: Proc, timeout: float) -> None:
        ready = proc.spec.ready
        end = time.monotonic() + timeout
        settled = time.monotonic() + ready.settle
        while time.monotonic() < end:
            if not proc.alive():
                raise ProcessFailed(
                    f"{proc.spec.name} exited with {proc.popen.returncode}:\n{proc.tail()}"
                )
            if ready.http is not None:
                ok = http_status(ready.http) == 200
            elif ready.port is not None:
                ok = port_open(ready.port)
            else:
                ok = time.monotonic() >= settled
            if ok:
                return
            time.sleep(0.05)
        raise ProcessFailed(f"{proc.spec.name} not ready after {timeout} s:\n{proc.tail()}")

    def stop(self, tag: str | None = None) -> None:
        """Stop the processes started with ``tag`` (all when None), last started first."""
        for proc in reversed(list(self.procs)):
            if tag is None or proc.tag == tag:
                proc.stop()
                self.procs.remove(proc)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
