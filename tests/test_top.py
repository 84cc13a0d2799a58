"""`dispatch-runner top`, driven by textual's test pilot: it shows a running fake agent, kills it
with `k`, shows its log with `l` and freezes the queue with `f` — through the runner's actions."""

import pytest

from dispatch_runner.actions import DispatchRequest
from dispatch_runner.cli.top import Top
from tests.conftest import Home, processes_with_env, until
from tests.test_runner import serving

pytestmark = pytest.mark.anyio


async def test_top_shows_a_run_reads_its_log_kills_it_and_freezes_the_queue(home: Home, backend: str) -> None:
    async with serving(home, "concurrency:\n  agent: 2\n") as runner:
        ws = (await runner.dispatch(DispatchRequest(task="@sleep=60 working hard", agent="agent")))[
            "workspace"
        ]
        await until(
            lambda: getattr(runner.store.get_workspace(ws), "state", None) == "running", message="running"
        )
        app = Top(runner, interval=0.1)
        async with app.run_test(size=(140, 40)) as pilot:
            await until(lambda: ws in app.shown, message="top to show the run")
            app.select(ws)
            await pilot.press("l")
            await until(
                lambda: f"{ws} (running)" in str(app.query_one("#log").render()), message="its log panel"
            )
            await pilot.press("k")
            await until(
                lambda: getattr(runner.store.get_workspace(ws), "state", None) == "killed", message="killed"
            )
            await pilot.press("f")
            await until(lambda: runner.store.is_frozen(), message="frozen from top")
            await until(lambda: "FROZEN" in str(app.query_one("#summary").render()), message="shown frozen")
            await pilot.press("f")
            await until(lambda: not runner.store.is_frozen(), message="unfrozen")
            await pilot.press("q")
    assert processes_with_env("DISPATCH_RUNNER_WORKSPACE", ws) == []
