"""One statistics() snapshot per part (anyio's style): what the runner, its bus and the MCP
pusher did, read by status and by tests instead of loose attributes."""

import shutil

import pytest

from dispatch_runner.actions import StatusRequest
from dispatch_runner.events import BusStatistics
from dispatch_runner.runner import RunnerStatistics
from tests.conftest import Home
from tests.test_runner import dispatch, serving, wait_all

pytestmark = pytest.mark.anyio


async def test_the_runner_counts_what_it_did_and_status_shows_the_bus(home: Home) -> None:
    async with serving(home, "concurrency:\n  agent: 1\n") as runner:
        before = runner.statistics()
        assert isinstance(before, RunnerStatistics) and isinstance(before.bus, BusStatistics)
        ok = await dispatch(runner, "x", agent="agent")
        await runner.stop()
        doomed = await dispatch(runner, "y", agent="agent", max_attempts=1)
        shutil.rmtree(doomed["path"])
        await runner.start()
        await wait_all(runner, [ok["workspace"], doomed["workspace"]])
        stats = runner.statistics()
        status = await runner.status(StatusRequest())
    assert (stats.dispatched, stats.spawned, stats.spawn_failures) == (2, 1, 1)
    assert stats.bus.published > before.bus.published and stats.bus.subscribers >= 0
    assert status["bus_dropped"] == stats.bus.dropped == 0
