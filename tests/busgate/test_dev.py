"""``busgate dev`` starts every part as its own process and leaves no orphan behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from busgate import brokers, dev
from busgate.brokers import free_port
from busgate.cli import DEV_CONFIG
from tests.stack import dev_stack

pytestmark = pytest.mark.e2e


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_dev_stops_every_child_on_signal(sig):
    with dev_stack("nats") as stack:
        assert stack.proc is not None
        with urllib.request.urlopen(f"{stack.url}/readyz", timeout=5) as resp:
            assert resp.status == 200
        children = descendants(stack.proc.pid)
        # broker, runner, adapter, edge
        assert len(children) >= 4
        stack.proc.send_signal(sig)
        assert stack.proc.wait(30) == 0
    deadline = time.monotonic() + 10
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in children if alive(p)]


def test_children_die_with_a_killed_dev_process():
    with dev_stack("nats") as stack:
        assert stack.proc is not None
        children = descendants(stack.proc.pid)
        os.kill(stack.proc.pid, signal.SIGKILL)
        stack.proc.wait(10)
        deadline = time.monotonic() + 15
        while any(alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = [p for p in children if alive(p)]
        for p in survivors:  # clean up before failing
            os.kill(p, signal.SIGKILL)
        assert not survivors


def test_a_part_whose_port_was_taken_meanwhile_is_started_on_another(monkeypatch):
    """``free_port`` only says a port was free when chosen: a runner that finds it taken
    exits at once, and ``busgate dev`` starts it again on another port."""
    stack = dev.Stack()
    with socket.create_server(("127.0.0.1", 0)) as listening:
        taken = listening.getsockname()[1]
        ports = iter([taken, free_port()])
        monkeypatch.setattr(brokers, "free_port", lambda host="127.0.0.1": next(ports))
        try:
            port = stack.serve(
                "runner",
                lambda port: ["runner", "rpc", "--listen", f"127.0.0.1:{port}"],
                dict(os.environ),
            )
            assert port != taken
            assert [name for name, _ in stack.procs] == ["runner"]  # the failed one forgotten
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/calls", timeout=5) as resp:
                assert resp.status == 200
        finally:
            stack.stop()


def test_dev_is_not_ready_on_another_server_holding_its_edge_port():
    """Something else listens on the port given to ``--listen`` and even answers /readyz as
    a ready edge would: ``busgate dev`` must not call that its stack (it waits for its own
    edge to listen there), and says why it stopped."""
    with open(DEV_CONFIG, "rb") as f:
        systems = {name: ["impostor"] for name in tomllib.load(f)["systems"]}

    class Impostor(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"ready": True, "systems": systems}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Impostor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        done = subprocess.run(
            [sys.executable, "-m", "busgate", "dev", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.shutdown()
        server.server_close()
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "busgate dev ready" not in output
    assert "address already in use" in output
    assert "before listening" in output
