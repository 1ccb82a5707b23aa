"""``busgate config push|show`` as an operator runs them, against a real nats-server."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest


def busgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "busgate", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.nats
def test_push_show_rollback(nats_server: Any, tmp_path: Path) -> None:
    where = ["--bus", nats_server.url, "--prefix", f"cc{uuid.uuid4().hex[:6]}"]
    good = tmp_path / "good.toml"
    good.write_text('[systems.a]\ntype = "rpc"\nbase_url = "http://127.0.0.1:9/"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[channels.c]\nsystem = "nope"\n')

    refused = busgate("config", "push", str(bad), *where)
    assert refused.returncode == 2
    assert "refused, nothing published" in refused.stderr
    assert "channels.c.system" in refused.stderr
    assert "no revision pushed" in busgate("config", "show", *where).stdout

    pushed = busgate("config", "push", str(good), *where)
    assert pushed.returncode == 0, pushed.stderr
    assert "revision 1 is live" in pushed.stdout
    back = busgate("config", "push", "--revision", "1", *where)
    assert "revision 2 is live (rollback to 1)" in back.stdout, back.stderr
    shown = busgate("config", "show", "--text", *where)
    assert "live revision 2" in shown.stdout
    assert "[systems.a]" in shown.stdout
    missing = busgate("config", "push", "--revision", "9", *where)
    assert missing.returncode == 2 and "no revision 9" in missing.stderr
