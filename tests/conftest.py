"""The real parts every test package shares, each started once per session (per xdist
worker): one nats-server, one Tansu broker and the sample RPC runner as its own process.

Tests that share them keep out of each other's way by a prefix of their own (streams,
subjects, topics) and by their own request ids on the runner's ``/calls`` log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from busgate.brokers import NatsServer, TansuBroker
from tests.stack import DevStack, runner_process


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="session")
def tansu_broker() -> Iterator[TansuBroker]:
    with TansuBroker() as broker:
        yield broker  # type: ignore[misc]


@pytest.fixture(scope="session")
def runner_url() -> Iterator[str]:
    """The sample RPC runner (``busgate runner rpc``) on a free port."""
    with runner_process() as (url, _):
        yield url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules that start processes (marked ``e2e``: 20-120 s each) run first. Under
    xdist (``make test``: loadscope, no reorder) the long modules are then shared out
    first and the quick ones fill in, instead of a worker left alone with a long module
    at the end; the sort is stable, so each module keeps its order."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


DEV_TAIL = 60
"""Lines of a dev stack's output shown with a failed test."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """Captured output as valid UTF-8: a test that sends stray header bytes gets them logged
    as lone surrogates (``surrogateescape``), which xdist cannot send from its worker (an
    INTERNALERROR that ends the run); they are kept as ``\\udcff`` escapes instead. A failed
    test that used a ``busgate dev`` stack gets the end of the stack's output in its report
    (its nodes' warnings say what the client could not see)."""
    report: pytest.TestReport = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, DevStack):
                report.sections.append(("busgate dev output", "\n".join(value.output[-DEV_TAIL:])))
    report.sections = [
        (title, text.encode("utf-8", "backslashreplace").decode("utf-8"))
        for title, text in report.sections
    ]
    return report
