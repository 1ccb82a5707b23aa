"""The adapter service's dispatch of stream requests."""

from __future__ import annotations

import pytest

from busgate.adapters.service import AdapterService
from busgate.contracts.config import parse
from busgate.contracts.wire import Request


class Steps:
    def __init__(self) -> None:
        self.steps: list[dict] = []

    async def step(self, items, *, next=None, last=False, error=None) -> None:
        self.steps.append({"items": items, "last": last, "error": error})


class Broken:
    async def stream(self, req, responder) -> None:
        raise RuntimeError("a bug")


@pytest.fixture
def service() -> AdapterService:
    config = parse(
        {
            "systems": {"demo": {"type": "rpc", "base_url": "http://127.0.0.1:9"}},
            "channels": {"demo": {"system": "demo"}},
        }
    )
    return AdapterService(config)  # not started: its bus stays unconnected


async def test_a_failing_saga_loop_ends_the_stream_with_an_internal_error(service, caplog):
    service.clients = {"demo": Broken()}
    steps = Steps()
    await service.handle(Request(id="r1", kind="stream", system="demo"), steps)
    (step,) = steps.steps
    assert step["last"] is True
    assert (step["error"].code, step["error"].status) == ("internal", 500)
    assert "stream r1 failed" in caplog.text


async def test_a_stream_for_a_system_it_does_not_serve_is_not_found(service):
    service.clients = {}
    steps = Steps()
    await service.handle(Request(id="r2", kind="stream", system="other"), steps)
    (step,) = steps.steps
    assert step["last"] is True
    assert step["error"].code == "not_found"
