"""A runner, an adapter and an edge as separate processes that meet only over a TLS bus, for
the NATS (``tls://``) and Kafka (``kafka+ssl://``) end-to-end checks."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from busgate.brokers import die_with_parent, free_port, wait_for_port


@contextlib.contextmanager
def processes(env: dict[str, str], *commands: list[str]) -> Iterator[list[subprocess.Popen]]:
    procs: list[subprocess.Popen] = []
    try:
        for args in commands:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "busgate", *args], env=env, preexec_fn=die_with_parent()
                )
            )
        yield procs
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def echo_across_processes(bus: str, tmp_path: Path, label: str, timeout: float) -> None:
    """Start the three processes on ``bus``, wait until the edge sees the adapter (presence
    over the bus), and check one call's answer came back across it."""
    runner, edge = free_port(), free_port()
    config = tmp_path / "busgate.toml"
    config.write_text(
        f"""
[gateway]
id = "tlsedge"
bus = "{bus}"
listen = "127.0.0.1:{edge}"

[systems.demo]
type = "rpc"
base_url = "http://127.0.0.1:{runner}/api/demo"

[channels.demo]
system = "demo"
"""
    )
    env = {**os.environ, "BUSGATE__TELEMETRY__SAMPLING": "0"}
    with processes(
        env,
        ["runner", "rpc", "--listen", f"127.0.0.1:{runner}"],
        ["adapter", "--config", str(config)],
        ["edge", "--config", str(config)],
    ) as procs:
        wait_for_port("127.0.0.1", edge, timeout, procs[2])
        end = time.monotonic() + timeout
        while True:  # until the edge sees the adapter (presence over the TLS bus)
            with urllib.request.urlopen(f"http://127.0.0.1:{edge}/readyz", timeout=2) as resp:
                if json.load(resp).get("systems", {}).get("demo"):
                    break
            assert time.monotonic() < end, f"the adapter never showed up over {label}"
            assert all(p.poll() is None for p in procs)
            time.sleep(0.1)
        call = urllib.request.Request(
            f"http://127.0.0.1:{edge}/api/request/demo/echo",
            data=json.dumps({"over": label}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(call, timeout=20) as resp:
            assert resp.status == 200
            assert json.load(resp) == {"over": label}
