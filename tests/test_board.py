"""runner.board (what the dashboard and `top` show) for a run on another host of the fleet: its
shim sends the run's progress (last line, tokens, dollars) with each lease renewal, so a board read
anywhere shows it; a run on this host is read from its log as it grows."""

import time
from typing import Any

import anyio
import pytest

from dispatch_runner.actions import DispatchRequest, KillRequest
from dispatch_runner.runner import Runner
from tests.conftest import Home, until
from tests.test_runner import serving

pytestmark = pytest.mark.anyio


async def running_row(runner: Runner, ws: str) -> dict[str, Any]:
    return next((r for r in (await runner.board())["running"] if r["workspace"] == ws), {})


async def test_a_run_on_another_host_shows_what_its_shim_sent_with_its_lease(
    home: Home, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCH_RUNNER_HOST_ID", "beta")  # the peer that runs it is on host beta
    home.write_config()
    # a lease renewed every third of a second
    home.config.write_text(
        home.config.read_text().replace("kill_grace_s: 1\n", "kill_grace_s: 1\n  lease_s: 1\n")
    )
    async with serving(home) as runner:
        ws = (await runner.dispatch(DispatchRequest(task="@turns=40 @sleep=0.3 a long one")))["workspace"]
        await until(
            lambda: getattr(runner.store.get_workspace(ws), "state", None) == "running", message="running"
        )
        here = await running_row(runner, ws)  # on its own host: read from its log
        assert here["host"] == "beta" and "progress_at" not in here
        monkeypatch.setenv("DISPATCH_RUNNER_HOST_ID", "alpha")  # the board is read on another host now
        deadline = time.monotonic() + 15
        while True:
            seen = await running_row(runner, ws)
            if seen.get("tokens") and (seen.get("last_line") or "").startswith("turn "):
                break
            assert time.monotonic() < deadline, f"no progress came with the lease: {seen}"
            await anyio.sleep(0.05)
        assert seen["host"] == "beta" and seen["progress_at"] > 0 and seen["cost_usd"] is None
        await runner.kill(KillRequest(workspace=ws))
