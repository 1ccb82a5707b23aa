"""``busgate dev --tls``: the whole stack as processes, HTTPS at the edge, curl as the
client; a client certificate's identity reaches the real runner in ``meta.identity``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import trustme

from tests.stack import dev_stack
from tests.tls.certs import write_ca, write_leaf

pytestmark = [pytest.mark.e2e, pytest.mark.nats]


def curl(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=30
    )
    return done.returncode, done.stdout + done.stderr


def test_dev_tls_identity_from_a_client_certificate_reaches_the_runner(tmp_path: Path) -> None:
    client_ca = trustme.CA()
    cert, key = write_leaf(client_ca.issue_cert("x", common_name="billing"), tmp_path, "billing")
    env = {
        "BUSGATE__GATEWAY__TLS__CLIENT_AUTH": "optional",
        "BUSGATE__GATEWAY__TLS__CA": write_ca(client_ca, tmp_path, "client-ca"),
        "BUSGATE__GATEWAY__TLS__IDENTITY__ROLES": '{ billing = ["user", "admin"] }',
    }
    with dev_stack("nats", env=env, args=("--tls",)) as stack:
        assert stack.url.startswith("https://")
        cacert = stack.parts["cacert"]
        url = f"{stack.url}/api/request/secure/meta"
        code, out = curl("--cacert", cacert, "--cert", cert, "--key", key, "-X", "POST", url)
        assert code == 0 and out.endswith("\n200"), out
        meta = json.loads(out.rsplit("\n", 1)[0])
        assert meta["identity"] == {
            "subject": "billing",
            "roles": ["user", "admin"],
            "claims": {"amr": ["mtls"]},
        }
        # no certificate: anonymous, and this path needs a token
        code, out = curl("--cacert", cacert, "-X", "POST", url)
        assert code == 0 and out.endswith("\n401"), out
        # plain HTTP on the HTTPS port is not served
        code, out = curl(url.replace("https://", "http://"))
        assert not out.endswith("\n200"), out
