"""Schemathesis against a whole dev stack (``busgate dev``: edge, adapter, runners, NATS as
processes), bounded: generated calls for every documented operation find no 5xx and no
answer the document does not describe -- once as an anonymous caller, once with the bearer
token of a logged-in admin, so that the protected paths are called through, not refused."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.stack import dev_stack

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    )
)


def schemathesis(url: str, cwd: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{url}/api/openapi.json",
            "--checks",
            CHECKS,
            "--phases",
            "examples,fuzzing",
            "--max-examples",
            "8",
            "--seed",
            "13",
            "--request-timeout",
            "10",
            "--no-color",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


@pytest.mark.e2e
@pytest.mark.nats
def test_no_5xx_and_no_contradiction(tmp_path: Path) -> None:
    with dev_stack("nats") as stack:
        run = schemathesis(stack.url, tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def login(url: str, username: str, password: str) -> str:
    """An access token of the dev stack's ``username``."""
    request = urllib.request.Request(
        f"{url}/api/auth/login/auth/password",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return str(json.load(resp)["access_token"])


@pytest.mark.e2e
@pytest.mark.nats
def test_no_5xx_and_no_contradiction_when_authenticated(tmp_path: Path) -> None:
    """The same with ``Authorization: Bearer`` of the admin (roles user, admin) on every call:
    the protected channels, the control API and the admin paths answer as documented. The
    auth endpoints are left out: a generated logout or account deletion would end the token's
    session and leave the rest of the run anonymous."""
    password = secrets.token_urlsafe(12)
    env = {"BUSGATE_DEV_PASSWORD": password, "BUSGATE_TOKEN_SECRET": secrets.token_urlsafe(48)}
    with dev_stack("nats", env=env) as stack:
        token = login(stack.url, "admin", password)
        run = schemathesis(
            stack.url,
            tmp_path,
            "--header",
            f"Authorization: Bearer {token}",
            "--exclude-path-regex",
            "^/api/auth/",
            "--report",
            "har",
            "--report-har-path",
            str(tmp_path / "calls.har"),
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert token not in run.stdout + run.stderr
    calls = [
        (e["request"]["url"], e["response"]["status"])
        for e in json.loads((tmp_path / "calls.har").read_text())["log"]["entries"]
    ]
    # The token held for the whole run, and the protected paths were called through.
    assert not [c for c in calls if c[1] == 401], calls[:20]
    through = [c for c in calls if "/api/request/secure/" in c[0] and c[1] not in (401, 403)]
    assert through, calls[:20]
    assert any("/api/request/secure/admin/" in url for url, _ in through), through[:20]
