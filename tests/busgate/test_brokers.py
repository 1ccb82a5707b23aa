"""``free_port``: the port a test server (or ``busgate dev``) binds next."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest

from busgate import brokers
from busgate.brokers import _ephemeral_low, free_port


def test_free_ports_are_below_the_ephemeral_range_and_never_repeated() -> None:
    """A port from the kernel's ephemeral range can be taken by an outgoing connection
    before the server binds it (two xdist workers, many Kafka clients: "address already in
    use" in CI); below that range only another server can take it."""
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < port < _ephemeral_low() for port in ports)


def test_a_port_something_listens_on_is_never_given(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        taken = listening.getsockname()[1]
        given = free_port()
        tries = iter([taken, taken, given + 1])  # given + 1: free, or skipped for the next
        monkeypatch.setattr(brokers.random, "randrange", lambda *_: next(tries, given + 2))
        assert free_port() not in (taken, given)


def test_a_broker_whose_chosen_port_was_taken_meanwhile_starts_on_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What CI met: a port free when chosen, bound by another process before the server."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        taken = listening.getsockname()[1]
        ports = iter([taken, free_port()])
        monkeypatch.setattr(brokers, "free_port", lambda host="127.0.0.1": next(ports))
        server = brokers.NatsServer()
        assert server.port == taken
        with server:
            assert server.port != taken
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
                assert conn.recv(4).startswith(b"INFO")


def test_a_broker_on_a_port_it_was_given_does_not_move() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        taken = listening.getsockname()[1]
        with pytest.raises(brokers.ExitedEarly):
            brokers.NatsServer(port=taken).start()


def test_a_server_that_neither_listens_nor_exits_is_killed_at_the_timeout() -> None:
    started: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> subprocess.Popen[bytes]:
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        return started[-1]

    with pytest.raises(TimeoutError):
        brokers.start_on_free_port(start, timeout=0.5)
    (proc,) = started  # not started again: only a process that exits gets another port
    assert proc.wait(5) == -signal.SIGKILL
