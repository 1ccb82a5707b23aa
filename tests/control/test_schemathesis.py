"""Schemathesis against a whole dev stack (``busgate dev``: edge, adapter, runners, NATS as
processes), bounded: generated calls for every documented operation find no 5xx and no
answer the document does not describe."""

from __future__ import annotations

import subprocess
import sys
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


@pytest.mark.e2e
@pytest.mark.nats
def test_no_5xx_and_no_contradiction(tmp_path: Path) -> None:
    with dev_stack("nats") as stack:
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{stack.url}/api/openapi.json",
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
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
